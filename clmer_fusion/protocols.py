"""Evaluation protocols -> folds of row indices: manifest splits, k-fold, leave-one-group-out,
cross-lingual (train on one language, test in-language and on every other language).

A protocol is a dict (``{"name": "kfold", "k": 5}``) or its name. Names and options:
- ``splits``: the ``split`` column; train = "train", val = "val"/"valid"/"dev"/"validation",
  test = "test". Without a val split, ``val_fraction`` of train (seeded) becomes val.
- ``kfold``: ``k`` (5), ``column`` ("fold"; assigned round-robin per class, seeded, when absent);
  fold f is the test set, fold f+1 the val set, the rest train.
- ``logo``: ``column`` (required: "speaker", "session", ...); each group in turn is the test set,
  ``val_fraction`` of the rest is val.
- ``crosslingual``: ``column`` ("language"), ``languages`` (default: all); per source language:
  train/val/test inside it (its ``split`` column, else 70/15/15 seeded), test sets ``in:<src>`` and
  ``cross:<other>`` (the other language's test part). Retention = cross score / in-language score.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clmer_features.errors import ClmerError
from clmer_fusion.data import FusionData

VAL_NAMES = ("val", "valid", "dev", "validation")
PROTOCOLS = ("splits", "kfold", "logo", "crosslingual")


@dataclass
class Fold:
    name: str
    train: np.ndarray
    val: np.ndarray
    tests: dict[str, np.ndarray]


def normalize(protocol: str | dict[str, Any]) -> dict[str, Any]:
    p = {"name": protocol} if isinstance(protocol, str) else dict(protocol)
    if p.get("name") not in PROTOCOLS:
        raise ClmerError(f"unknown protocol {p.get('name')!r}; choose from {', '.join(PROTOCOLS)}")
    return p


def _need(data: FusionData, column: str, protocol: str) -> np.ndarray:
    values = data.column(column)
    if values is None:
        raise ClmerError(f"protocol {protocol!r} needs a '{column}' column in the manifest")
    return np.asarray([str(v) if v is not None else "" for v in values], object)


def _carve(idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, held-out fraction), seeded."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(idx)
    k = max(1, int(round(len(idx) * fraction))) if len(idx) > 1 else 0
    return np.sort(perm[k:]), np.sort(perm[:k])


def _splits(data: FusionData, p: dict[str, Any], seed: int) -> list[Fold]:
    split = np.char.lower(_need(data, "split", "splits").astype(str))
    train = np.flatnonzero(split == "train")
    val = np.flatnonzero(np.isin(split, VAL_NAMES))
    test = np.flatnonzero(split == "test")
    if len(train) == 0:
        raise ClmerError("protocol 'splits': no clip has split == 'train'")
    if len(val) == 0:
        train, val = _carve(train, p.get("val_fraction", 0.1), seed)
    tests = {"train": train, "val": val}
    if len(test):
        tests["test"] = test
    return [Fold("splits", train, val, tests)]


def _kfold(data: FusionData, p: dict[str, Any], seed: int) -> list[Fold]:
    k = int(p.get("k", 5))
    column = p.get("column", "fold")
    values = data.column(column)
    if values is None:
        rng = np.random.default_rng(seed)
        fold = np.empty(data.n, np.int64)
        labels = data.y if data.task == "classification" else np.zeros(data.n, np.int64)
        for c in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == c))
            fold[rows] = np.arange(len(rows)) % k
        names = [str(i + 1) for i in range(k)]
        keys = np.array([names[f] for f in fold], object)
    else:
        keys = np.asarray([str(v) for v in values], object)
        names = sorted(set(keys), key=lambda s: (len(s), s))
        if len(names) < 2:
            raise ClmerError(f"protocol 'kfold': column '{column}' has {len(names)} distinct value(s)")
    folds = []
    for i, name in enumerate(names):
        test = np.flatnonzero(keys == name)
        val = np.flatnonzero(keys == names[(i + 1) % len(names)]) if len(names) > 2 else np.array([], np.int64)
        train = np.flatnonzero((keys != name) & ~np.isin(np.arange(data.n), val))
        if len(val) == 0:
            train, val = _carve(train, 0.1, seed)
        folds.append(Fold(f"fold{name}", train, val, {"val": val, "test": test}))
    return folds


def _logo(data: FusionData, p: dict[str, Any], seed: int) -> list[Fold]:
    column = p.get("column")
    if not column:
        raise ClmerError("protocol 'logo' needs a 'column' (e.g. speaker or session)")
    keys = _need(data, column, "logo")
    folds = []
    for g in sorted(set(keys)):
        test = np.flatnonzero(keys == g)
        train, val = _carve(np.flatnonzero(keys != g), p.get("val_fraction", 0.1), seed)
        folds.append(Fold(f"{column}={g}", train, val, {"val": val, "test": test}))
    return folds


def _crosslingual(data: FusionData, p: dict[str, Any], seed: int) -> list[Fold]:
    column = p.get("column", "language")
    lang = _need(data, column, "crosslingual")
    langs = list(p.get("languages") or sorted(set(lang) - {""}))
    if len(langs) < 2:
        raise ClmerError(f"protocol 'crosslingual' needs at least two languages in '{column}', found {langs}")
    split = data.column("split")
    split = np.char.lower(np.asarray([str(s) for s in split], str)) if split is not None else None
    parts: dict[str, dict[str, np.ndarray]] = {}
    for i, lg in enumerate(langs):
        rows = np.flatnonzero(lang == lg)
        if len(rows) == 0:
            raise ClmerError(f"protocol 'crosslingual': no clip has {column} == {lg!r}")
        if split is not None and (split[rows] == "train").any() and (split[rows] == "test").any():
            tr, te = rows[split[rows] == "train"], rows[split[rows] == "test"]
            va = rows[np.isin(split[rows], VAL_NAMES)]
            if len(va) == 0:
                tr, va = _carve(tr, 0.1, seed)
        else:
            rest, te = _carve(rows, 0.15, seed + i)
            tr, va = _carve(rest, 0.15 / 0.85, seed + i)
        parts[lg] = {"train": tr, "val": va, "test": te}
    folds = []
    for src in langs:
        tests = {"val": parts[src]["val"], f"in:{src}": parts[src]["test"]}
        tests.update({f"cross:{t}": parts[t]["test"] for t in langs if t != src})
        folds.append(Fold(f"{column}={src}", parts[src]["train"], parts[src]["val"], tests))
    return folds


def make_folds(data: FusionData, protocol: str | dict[str, Any], seed: int = 0) -> list[Fold]:
    """The folds of ``protocol`` over ``data`` (deterministic for a given seed)."""
    p = normalize(protocol)
    fn = {"splits": _splits, "kfold": _kfold, "logo": _logo, "crosslingual": _crosslingual}[p["name"]]
    return fn(data, p, seed)
