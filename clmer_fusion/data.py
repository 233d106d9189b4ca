"""Features + labels as arrays: utterance level (pooled) or frame level (padded, with masks).

Filled by :func:`clmer_fusion.request.load` from the store (or by ``synthetic.make_synthetic``).
Missing-modality policy, reported in ``FusionData.missing_report``:
- "drop": keep only clips that have every selected modality;
- "embed": keep every clip that has at least one; a head replaces an absent modality with a learned
  embedding (``present`` says which are there).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from clmer_features.errors import ClmerError

META_COLUMNS = ("split", "fold", "language", "speaker", "session", "label", "label_value")


@dataclass
class FusionData:
    """In-memory dataset. ``x[m]`` is [N, D] (utterance) or [N, T, D] with ``mask[m]`` [N, T]."""

    clip_ids: list[str]
    modalities: list[str]
    x: dict[str, np.ndarray]
    present: np.ndarray                       # [N, M] bool
    y: np.ndarray                             # int64 class index or float32 value
    task: str = "classification"              # or "regression"
    classes: list[str] = field(default_factory=list)
    meta: pl.DataFrame | None = None          # clip_id + split/fold/language/speaker/... columns
    mask: dict[str, np.ndarray] | None = None
    missing_report: dict[str, Any] = field(default_factory=dict)
    spec_ids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.clip_ids)
        for m in self.modalities:
            if len(self.x[m]) != n:
                raise ValueError(f"modality {m}: {len(self.x[m])} rows for {n} clips")
        if self.present.shape != (n, len(self.modalities)):
            raise ValueError(f"present mask shape {self.present.shape} != ({n}, {len(self.modalities)})")
        if self.meta is None:
            self.meta = pl.DataFrame({"clip_id": self.clip_ids})

    @property
    def n(self) -> int:
        return len(self.clip_ids)

    @property
    def level(self) -> str:
        return "frame" if self.mask is not None else "utterance"

    @property
    def dims(self) -> list[int]:
        return [int(self.x[m].shape[-1]) for m in self.modalities]

    @property
    def n_out(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    def column(self, name: str) -> np.ndarray | None:
        """A metadata column as a numpy array (None when absent or all null)."""
        if self.meta is None or name not in self.meta.columns or self.meta[name].null_count() == self.n:
            return None
        return self.meta[name].to_numpy()

    def take(self, idx: np.ndarray) -> "FusionData":
        """Rows ``idx`` (same modalities, classes and report)."""
        idx = np.asarray(idx, np.int64)
        return replace(
            self, clip_ids=[self.clip_ids[i] for i in idx],
            x={m: v[idx] for m, v in self.x.items()}, present=self.present[idx], y=self.y[idx],
            meta=self.meta[idx] if self.meta is not None else None,
            mask={m: v[idx] for m, v in self.mask.items()} if self.mask is not None else None,
        )

    def select(self, modalities: Sequence[str]) -> "FusionData":
        """Only the given modalities (order as given)."""
        unknown = [m for m in modalities if m not in self.modalities]
        if unknown:
            raise ClmerError(f"unknown modality {unknown}; have {self.modalities}")
        cols = [self.modalities.index(m) for m in modalities]
        return replace(
            self, modalities=list(modalities), x={m: self.x[m] for m in modalities},
            present=self.present[:, cols],
            mask={m: self.mask[m] for m in modalities} if self.mask is not None else None,
        )

    def apply_missing(self, policy: str) -> "FusionData":
        """Apply a missing-modality policy ("drop" or "embed") and record what it did."""
        if policy not in ("drop", "embed"):
            raise ClmerError(f"missing-modality policy must be 'drop' or 'embed', not {policy!r}")
        keep = self.present.all(1) if policy == "drop" else self.present.any(1)
        report = {
            "policy": policy, "clips": self.n, "kept": int(keep.sum()), "dropped": int((~keep).sum()),
            "missing_per_modality": {m: int((~self.present[:, i]).sum()) for i, m in enumerate(self.modalities)},
            "dropped_clip_ids": [c for c, k in zip(self.clip_ids, keep) if not k][:20],
        }
        out = self.take(np.flatnonzero(keep)) if not keep.all() else self
        return replace(out, missing_report=report)


def encode_labels(values: Sequence[Any], classes: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Class names -> indices (classes sorted unless given); unknown names raise."""
    names = [str(v) for v in values]
    classes = list(classes) if classes is not None else sorted(set(names))
    pos = {c: i for i, c in enumerate(classes)}
    bad = sorted({v for v in names if v not in pos})
    if bad:
        raise ClmerError(f"labels {bad[:5]} are not among the classes {classes}")
    return np.array([pos[v] for v in names], np.int64), classes


def load_from_store(
    manifest_path: str | Path, cache_dir: str | Path, features: Sequence[str], *,
    target: str = "label", pool: str = "mean", level: str = "utterance", missing: str = "drop",
    dataset: str | None = None, max_frames: int = 256, spec_ids: dict[str, str] | None = None,
    check_fresh: bool = False,
) -> FusionData:
    """Shorthand for ``clmer_fusion.request.load(Request.create(...))`` (see there).

    ``pool``: "mean" | "max" | "model" (the extractor's own utterance vector) for utterance level;
    ``level="frame"`` gives padded sequences (used by the temporal head and by attention pooling).
    Clips without a ``target`` value are left out (counted in the report). The manifest's media
    are not read unless ``check_fresh``.
    """
    from clmer_fusion.request import Request, load

    return load(Request.create(manifest_path, cache_dir, features, spec_ids=spec_ids, target=target,
                               level=level, pool=pool, missing=missing, dataset=dataset,
                               max_frames=max_frames, check_fresh=check_fresh))
