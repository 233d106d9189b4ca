"""CMU-MOSEI in the MMSA layout: English, sentiment in [-3, 3].

Layout of the release::

    ROOT/label.csv   video_id, clip_id, text, label, annotation, mode
    ROOT/Raw/<video_id>/<clip_id>.mp4

MMSA may also write empty label_T/label_A/label_V columns; they are ignored.
See ``recipes.mmsa`` for the shared rules.
"""
from __future__ import annotations

from pathlib import Path

from clmer_features.recipes.common import RecipeResult
from clmer_features.recipes.mmsa import build_mmsa

NAME = "mosei"
OPTIONS: dict[str, str] = {"label_file": "label file name (default: label.csv)"}


def build(root: Path, *, keep_missing: bool = False, label_file: str | None = None) -> RecipeResult:
    return build_mmsa(root, NAME, language="en", value_range=(-3.0, 3.0), keep_unimodal=False,
                      keep_missing=keep_missing, label_file=label_file)
