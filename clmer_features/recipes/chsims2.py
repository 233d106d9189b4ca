"""CH-SIMS v2 (supervised part, ``ch-simsv2s``): Mandarin, sentiment in [-1, 1].

Layout of the release::

    ROOT/label.csv (or meta.csv)   video_id, clip_id, text, label, label_T, label_A, label_V,
                                   annotation, mode
    ROOT/Raw/<video_id>/<clip_id>.mp4

The unimodal labels are kept as the manifest columns ``label_T``,
``label_A``, ``label_V``. See ``recipes.mmsa`` for the shared rules.
"""
from __future__ import annotations

from pathlib import Path

from clmer_features.recipes.common import RecipeResult
from clmer_features.recipes.mmsa import build_mmsa

NAME = "chsims2"
OPTIONS: dict[str, str] = {"label_file": "label file name (default: label.csv, else meta.csv)"}


def build(root: Path, *, keep_missing: bool = False, label_file: str | None = None) -> RecipeResult:
    return build_mmsa(root, NAME, language="zh", value_range=(-1.0, 1.0), keep_unimodal=True,
                      keep_missing=keep_missing, label_file=label_file)
