"""Synthetic multimodal data with a known signal share per modality (tests and benchmarks).

Each clip carries its label in at most one modality: with probability ``coverage`` an informative
modality is drawn with probabilities ``shares``; there the features are ``sep * mu[m, label] + noise``,
every other modality is pure noise. A model that sees modalities S is then right on a fraction
``1/K + coverage * sum(shares[S]) * (a - 1/K)`` of clips (a: accuracy on an informative modality),
so accuracy is additive over modalities and the exact Shapley value of modality m, normalised to
sum to one, equals ``shares[m]``: a ground truth for the explanation code.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import polars as pl

from clmer_fusion.data import FusionData


def make_synthetic(
    n: int = 2000, modalities: Sequence[str] = ("text", "audio", "visual"),
    dims: Sequence[int] = (32, 32, 32), shares: Sequence[float] = (0.5, 0.3, 0.2),
    n_classes: int = 4, coverage: float = 0.9, sep: float = 3.0, seed: int = 0,
    languages: Sequence[str] = ("en", "zh"), n_speakers: int = 10, n_folds: int = 5,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), missing_rate: float = 0.0,
    frames: int = 0, task: str = "classification",
) -> FusionData:
    """Build a ``FusionData``; ``frames>0`` gives frame-level sequences of 2..frames valid frames.

    ``task="regression"`` makes ``y`` a value in [-3, 3] (labels evenly spaced) instead of a class.
    ``missing_rate`` hides each modality of each clip independently (never all of a clip's).
    """
    rng = np.random.default_rng(seed)
    shares = np.asarray(shares, np.float64) / np.sum(shares)
    m_count = len(modalities)
    y = rng.integers(0, n_classes, n)
    informative = np.where(rng.random(n) < coverage, rng.choice(m_count, n, p=shares), -1)
    x: dict[str, np.ndarray] = {}
    mask: dict[str, np.ndarray] | None = {} if frames else None
    for i, (m, d) in enumerate(zip(modalities, dims)):
        mu = rng.normal(size=(n_classes, d))
        mu /= np.linalg.norm(mu, axis=1, keepdims=True)
        signal = (informative == i)[:, None] * sep * mu[y]
        if frames:
            lengths = rng.integers(2, frames + 1, n)
            valid = np.arange(frames)[None, :] < lengths[:, None]
            seq = signal[:, None, :] + rng.normal(size=(n, frames, d)) * np.sqrt(frames / 4)
            x[m] = (seq * valid[..., None]).astype(np.float32)
            mask[m] = valid
        else:
            x[m] = (signal + rng.normal(size=(n, d))).astype(np.float32)
    present = np.ones((n, m_count), bool)
    if missing_rate > 0:
        present = rng.random((n, m_count)) >= missing_rate
        none = ~present.any(1)
        present[none, rng.integers(0, m_count, none.sum())] = True
        for i, m in enumerate(modalities):
            x[m][~present[:, i]] = 0.0
    cut = np.cumsum(split_fractions)[:2] * n
    order = rng.permutation(n)
    split = np.empty(n, object)
    split[order[: int(cut[0])]], split[order[int(cut[0]): int(cut[1])]], split[order[int(cut[1]):]] = (
        "train", "val", "test")
    classes = [f"c{k}" for k in range(n_classes)]
    values = (y / max(n_classes - 1, 1) * 6 - 3).astype(np.float32)
    meta = pl.DataFrame({
        "clip_id": [f"clip{i:06d}" for i in range(n)],
        "split": split.tolist(),
        "fold": (order.argsort() % n_folds + 1).astype(np.int64),
        "language": rng.choice(list(languages), n).tolist(),
        "speaker": [f"spk{s:02d}" for s in rng.integers(0, n_speakers, n)],
        "label": [classes[k] for k in y],
        "label_value": values,
        "informative": [modalities[k] if k >= 0 else "" for k in informative],
    })
    if task == "regression":
        return FusionData(meta["clip_id"].to_list(), list(modalities), x, present, values,
                          task="regression", classes=[], meta=meta, mask=mask)
    return FusionData(meta["clip_id"].to_list(), list(modalities), x, present, y.astype(np.int64),
                      classes=classes, meta=meta, mask=mask)
