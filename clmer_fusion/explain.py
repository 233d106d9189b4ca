"""Exact Shapley values of modalities over all modality subsets (2^M; 8 for three modalities).

Value of a subset S, two ways (``method``):
- "retrain" (default): a head trained on S alone (the grid trains these anyway); the empty set is
  the no-input predictor (train-set class prior; train mean for regression).
- "mask": one head trained with modality dropout, evaluated with the modalities outside S marked
  absent (they get the learned missing embedding); the empty set is "all absent". One fit instead
  of 2^M - 1, but only as good as the missing embedding.
Quantities: the metric on the evaluation set (e.g. UAR), and per clip the probability of the class
the full model predicts (the predicted value for regression), aggregated per class (true label)
and per language. Every fold of the protocol and every evaluation set of a fold is explained
(cross-lingual: the in-language and each cross-language test set), each result naming its set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from math import factorial
from typing import Any, Sequence

import numpy as np
import polars as pl

from clmer_fusion.data import FusionData
from clmer_fusion.fit import TrainConfig, fit
from clmer_fusion.metrics import primary_metric, score
from clmer_fusion.protocols import make_folds

Subset = frozenset


def all_subsets(players: Sequence[str]) -> list[frozenset[str]]:
    return [frozenset(c) for r in range(len(players) + 1) for c in combinations(players, r)]


def shapley(values: dict[frozenset[str], Any], players: Sequence[str]) -> dict[str, Any]:
    """Exact Shapley values; ``values`` maps every subset (incl. the empty one) to a number or array."""
    n = len(players)
    out: dict[str, Any] = {}
    for p in players:
        others = [q for q in players if q != p]
        total: Any = 0.0
        for r in range(n):
            w = factorial(r) * factorial(n - r - 1) / factorial(n)
            for c in combinations(others, r):
                s = frozenset(c)
                total = total + w * (np.asarray(values[s | {p}]) - np.asarray(values[s]))
        out[p] = total
    return out


def shares_of(phi: dict[str, float], metric: str = "the metric") -> tuple[dict[str, float | None], str]:
    """Each modality's share of the total Shapley value, and a note saying how to read them.

    A share is defined only when the total is positive (the modalities together beat the
    no-input baseline); otherwise every share is None and the note says why. A negative share
    under a positive total is a modality that lowers the score.
    """
    total = float(sum(phi.values()))
    if not total > 1e-12:
        return ({m: None for m in phi},
                f"shares undefined: together the modalities do not beat the no-input baseline on {metric} "
                f"(total {total:+.4f}); read the Shapley values themselves")
    out = {m: v / total for m, v in phi.items()}
    hurt = [m for m, v in phi.items() if v < 0]
    note = f"share = Shapley value / total ({total:+.4f})"
    if hurt:
        note += f"; a negative share ({', '.join(hurt)}) lowers {metric}, so the other shares exceed their part"
    return out, note


def format_share(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


@dataclass
class Explanation:
    """Shapley values of each modality on one evaluation set (``fold``/``eval_set``): on the metric,
    and per clip aggregated by group."""

    modalities: list[str]
    metric: str
    subset_scores: dict[str, float]                  # "text+audio" -> metric
    metric_shapley: dict[str, float]
    clip_shapley: pl.DataFrame                       # clip_id, label, language, one column per modality
    groups: pl.DataFrame = field(default_factory=pl.DataFrame)   # group, n, per-modality mean values
    fold: str = ""
    eval_set: str = ""

    def shares(self) -> dict[str, float | None]:
        """Metric Shapley values over their total (None for every modality when undefined)."""
        return shares_of(self.metric_shapley, self.metric)[0]

    def table(self) -> str:
        sh, note = shares_of(self.metric_shapley, self.metric)
        where = f" on {self.fold}, set {self.eval_set} ({self.clip_shapley.height} clips)" if self.fold else ""
        lines = [f"Shapley value of each modality on {self.metric}{where}",
                 f"{'modality':<14} {'shapley':>9} {'share':>7}"]
        lines += [f"{m:<14} {self.metric_shapley[m]:>9.4f} {format_share(sh[m]):>7}" for m in self.modalities]
        lines.append(note)
        lines.append("")
        lines.append("mean Shapley value on the predicted-class probability, per group")
        lines.append(f"{'group':<22} {'n':>6} " + " ".join(f"{m:>10}" for m in self.modalities))
        for row in self.groups.iter_rows(named=True):
            lines.append(f"{row['group']:<22} {row['n']:>6} " + " ".join(f"{row[m]:>10.4f}" for m in self.modalities))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        sh, note = shares_of(self.metric_shapley, self.metric)
        return {"fold": self.fold, "set": self.eval_set, "n": self.clip_shapley.height, "metric": self.metric,
                "subset_scores": self.subset_scores, "metric_shapley": self.metric_shapley, "shares": sh,
                "shares_note": note, "groups": self.groups.to_dicts()}


def subset_name(s: frozenset[str], order: Sequence[str]) -> str:
    return "+".join(m for m in order if m in s) or "(none)"


def explain_outputs(
    data: FusionData, outputs: dict[frozenset[str], np.ndarray], prior: np.ndarray | float,
    metric: str | None = None,
) -> Explanation:
    """Shapley values from each subset's outputs on ``data`` (probabilities [N, K] or values [N]).

    ``prior``: the no-input prediction (train class frequencies, or the train mean value).
    """
    mods = list(data.modalities)
    metric = metric or primary_metric(data.task)
    full = outputs[frozenset(mods)]
    outs = dict(outputs)
    if frozenset() not in outs:
        outs[frozenset()] = (np.broadcast_to(np.asarray(prior, np.float64), full.shape).copy())
    scores, clip_vals = {}, {}
    if data.task == "classification":
        chosen = full.argmax(1)
        for s, out in outs.items():
            pred = out.argmax(1) if s else np.full(data.n, int(np.argmax(prior)))
            scores[s] = score("classification", data.y, pred, len(data.classes))[metric]
            clip_vals[s] = out[np.arange(data.n), chosen]
    else:
        for s, out in outs.items():
            scores[s] = score("regression", data.y, out)[metric]
            clip_vals[s] = out
    phi = {m: float(v) for m, v in shapley(scores, mods).items()}
    per_clip = shapley(clip_vals, mods)
    labels = [data.classes[i] for i in data.y] if data.task == "classification" else data.y.tolist()
    lang = data.column("language")
    frame = pl.DataFrame({"clip_id": data.clip_ids, "label": labels,
                          "language": [str(v) for v in lang] if lang is not None else [""] * data.n,
                          **{m: np.asarray(per_clip[m], np.float64) for m in mods}})
    groups = [frame.select(pl.lit("all").alias("group"), pl.len().alias("n"), *[pl.col(m).mean() for m in mods])]
    for col in ("label", "language"):
        if col == "label" and data.task != "classification":
            continue
        if frame[col].n_unique() > 1 or col == "label":
            g = frame.group_by(col).agg(pl.len().alias("n"), *[pl.col(m).mean() for m in mods]).sort(col)
            groups.append(g.select((pl.lit(f"{col}=") + pl.col(col).cast(pl.Utf8)).alias("group"),
                                   pl.col("n"), *mods))
    return Explanation(modalities=mods, metric=metric,
                       subset_scores={subset_name(s, mods): float(v) for s, v in scores.items()},
                       metric_shapley=phi, clip_shapley=frame,
                       groups=pl.concat([g.with_columns(pl.col("n").cast(pl.Int64)) for g in groups]))


def prior_of(train: FusionData) -> np.ndarray | float:
    if train.task == "classification":
        return np.bincount(train.y, minlength=len(train.classes)) / max(train.n, 1)
    return float(np.mean(train.y))


def evaluation_sets(fold: Any) -> list[str]:
    """A fold's evaluation sets other than train and val ("test", "in:en", "cross:zh", ...); val if none."""
    sets = [k for k in fold.tests if k not in ("train", "val")]
    return sets or ["val"]


def explain(
    data: FusionData, config: TrainConfig, protocol: str | dict[str, Any] = "splits", *,
    method: str = "retrain", metric: str | None = None,
) -> list[Explanation]:
    """Shapley explanations on every fold of ``protocol`` and every evaluation set of each fold
    (one head per modality subset and fold; each explanation names its fold and set)."""
    if method not in ("retrain", "mask"):
        from clmer_features.errors import ClmerError
        raise ClmerError(f"Shapley method must be 'retrain' or 'mask', not {method!r}")
    mods = list(data.modalities)
    out: list[Explanation] = []
    for fold in make_folds(data, protocol, seed=config.seed):
        train, val = data.take(fold.train), data.take(fold.val)
        sets = {name: data.take(fold.tests[name]) for name in evaluation_sets(fold)}
        outputs: dict[str, dict[frozenset[str], np.ndarray]] = {name: {} for name in sets}
        if method == "retrain":
            for s in all_subsets(mods)[1:]:
                keep = [m for m in mods if m in s]
                model = fit(train.select(keep), val.select(keep), config)
                for name, ev in sets.items():
                    outputs[name][s] = model.predict(ev.select(keep))
        else:
            cfg = config if config.modality_dropout > 0 else \
                TrainConfig.from_dict({**config.to_dict(), "modality_dropout": 0.3})
            model = fit(train, val, cfg)
            for s in all_subsets(mods):
                cols = np.array([m in s for m in mods])
                for name, ev in sets.items():
                    outputs[name][s] = model.predict(ev, present=ev.present & cols[None, :])
        for name, ev in sets.items():
            if ev.n == 0:
                continue
            e = explain_outputs(ev, outputs[name], prior_of(train), metric)
            e.fold, e.eval_set = fold.name, name
            out.append(e)
    return out
