"""Scores for classification (WAR, UAR, F1, confusion, bootstrap CIs) and MMSA-style regression.

Regression metrics follow the MMSA definitions (thuiar/MMSA ``metricsTop.py``), re-implemented here:
- scale "mosei" (labels in [-3, 3]): MAE and Pearson Corr on raw values; Acc-7/5/3 = accuracy of
  ``round(clip(v, -k, k))`` for k = 3/2/1; Acc-2 "has0" = (v >= 0) vs (v < 0) over all clips and
  "non0" = (v > 0) vs (v < 0) over clips whose truth is not 0; F1 = weighted F1 of those binary labels.
- scale "sims" (labels in [-1, 1]): values clipped to [-1, 1], binned with edges
  2: (-1.01, 0], (0, 1.01]; 3: (-1.01, -0.1], (-0.1, 0.1], (0.1, 1.01];
  5: (-1.01, -0.7], (-0.7, -0.1], (-0.1, 0.1], (0.1, 0.7], (0.7, 1.01]; F1 = weighted F1 of the 2 bins.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

CLASSIFICATION_KEYS = ("war", "uar", "macro_f1", "weighted_f1")


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix [true, predicted] of integer labels 0..n_classes-1."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def _f1s(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1, support


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """WAR (accuracy), UAR (mean recall over classes present in the truth), macro and weighted F1.

    Macro F1 averages over classes present in truth or prediction (as scikit-learn does with the
    observed labels); weighted F1 weights each class's F1 by its support.
    """
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    if len(y_true) == 0:
        return {k: float("nan") for k in CLASSIFICATION_KEYS}
    cm = confusion(y_true, y_pred, n_classes)
    f1, support = _f1s(cm)
    seen = (support > 0) | (cm.sum(0) > 0)
    recall = np.diag(cm)[support > 0] / support[support > 0]
    return {
        "war": float(np.trace(cm) / cm.sum()),
        "uar": float(recall.mean()),
        "macro_f1": float(f1[seen].mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
    }


def _weighted_f1_binary(t: np.ndarray, p: np.ndarray) -> float:
    return classification_metrics(t.astype(np.int64), p.astype(np.int64), 2)["weighted_f1"]


def _round_acc(p: np.ndarray, t: np.ndarray, k: float) -> float:
    return float(np.mean(np.round(np.clip(p, -k, k)) == np.round(np.clip(t, -k, k))))


def _bins(v: np.ndarray, edges: list[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges[1:-1]), v, side="left")


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, scale: str = "auto") -> dict[str, float]:
    """MMSA regression metrics; ``scale`` is "mosei" ([-3, 3]), "sims" ([-1, 1]) or "auto" (by range)."""
    t = np.asarray(y_true, np.float64).ravel()
    p = np.asarray(y_pred, np.float64).ravel()
    if scale == "auto":
        scale = "sims" if np.abs(t).max(initial=0) <= 1.0 else "mosei"
    corr = float(np.corrcoef(p, t)[0, 1]) if len(t) > 1 and p.std() > 0 and t.std() > 0 else float("nan")
    if scale == "sims":
        p, t = np.clip(p, -1, 1), np.clip(t, -1, 1)
        e2, e3, e5 = [-1.01, 0.0, 1.01], [-1.01, -0.1, 0.1, 1.01], [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]
        p2, t2 = _bins(p, e2), _bins(t, e2)
        return {
            "mae": float(np.mean(np.abs(p - t))), "corr": corr,
            "acc2": float(np.mean(p2 == t2)),
            "acc3": float(np.mean(_bins(p, e3) == _bins(t, e3))),
            "acc5": float(np.mean(_bins(p, e5) == _bins(t, e5))),
            "f1": _weighted_f1_binary(t2, p2),
        }
    if scale != "mosei":
        raise ValueError(f"unknown regression scale {scale!r} (mosei, sims, auto)")
    nz = t != 0
    return {
        "mae": float(np.mean(np.abs(p - t))), "corr": corr,
        "acc2_has0": float(np.mean((p >= 0) == (t >= 0))),
        "f1_has0": _weighted_f1_binary(t >= 0, p >= 0),
        "acc2_non0": float(np.mean((p[nz] > 0) == (t[nz] > 0))) if nz.any() else float("nan"),
        "f1_non0": _weighted_f1_binary(t[nz] > 0, p[nz] > 0) if nz.any() else float("nan"),
        "acc3": _round_acc(p, t, 1.0), "acc5": _round_acc(p, t, 2.0), "acc7": _round_acc(p, t, 3.0),
    }


def bootstrap_ci(
    fn: Callable[[np.ndarray], dict[str, float]], n: int, n_boot: int = 1000,
    alpha: float = 0.05, seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs: ``fn(idx)`` scores a resample given its row indices."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        for k, v in fn(rng.integers(0, n, n)).items():
            draws.setdefault(k, []).append(v)
    lo, hi = 100 * alpha / 2, 100 * (1 - alpha / 2)
    return {k: (float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi))) for k, v in draws.items()}


def score(
    task: str, y_true: np.ndarray, pred: np.ndarray, n_classes: int = 0,
    ci: int = 0, seed: int = 0, scale: str = "auto",
) -> dict[str, float]:
    """Metrics of one evaluation set; ``pred`` is class indices or values. ``ci`` bootstrap draws
    add ``<metric>_lo``/``<metric>_hi`` (95 %)."""
    if task == "classification":
        def fn(idx: np.ndarray) -> dict[str, float]:
            return classification_metrics(y_true[idx], pred[idx], n_classes)
    else:
        def fn(idx: np.ndarray) -> dict[str, float]:
            return regression_metrics(y_true[idx], pred[idx], scale)
    out = fn(np.arange(len(y_true)))
    out["n"] = int(len(y_true))
    if ci and len(y_true):
        for k, (lo, hi) in bootstrap_ci(fn, len(y_true), ci, seed=seed).items():
            out[f"{k}_lo"], out[f"{k}_hi"] = lo, hi
    return out


def primary_metric(task: str) -> str:
    """The metric used for model selection tables and Shapley by default."""
    return "uar" if task == "classification" else "mae"
