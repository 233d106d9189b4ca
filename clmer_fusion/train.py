"""Train and score heads under a protocol; the Python API behind ``clmer-fusion train``.

    from clmer_fusion.train import train_from_store
    res = train_from_store("clips.csv", "cache", ["bert"], head="linear")
    print(res.table())            # per fold and evaluation set: war, uar, macro_f1, weighted_f1
    res.save("runs/bert_linear")  # metrics.json + combined_results.csv
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from clmer_fusion.data import FusionData
from clmer_features.store.layout import atomic_write_bytes
from clmer_fusion.fit import Fitted, TrainConfig, fit
from clmer_fusion.metrics import score
from clmer_fusion.protocols import make_folds, normalize

SHOW = {"classification": ("war", "uar", "macro_f1", "weighted_f1"),
        "regression": ("mae", "corr", "acc2", "acc2_has0", "acc2_non0", "acc7")}


@dataclass
class Result:
    """Scores of one head under one protocol: ``rows`` (one per fold x evaluation set), test-set
    predictions, confusion matrices, the missing-modality report; ``table()`` prints them."""

    config: TrainConfig
    protocol: dict[str, Any]
    modalities: list[str]
    task: str
    classes: list[str]
    rows: list[dict[str, Any]]
    predictions: pl.DataFrame
    confusions: dict[str, list[list[int]]] = field(default_factory=dict)
    missing_report: dict[str, Any] = field(default_factory=dict)
    spec_ids: dict[str, str] = field(default_factory=dict)
    models: list[Fitted] = field(default_factory=list)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)   # "fold/set" -> probs or values

    def metrics_by_split(self) -> dict[str, dict[str, Any]]:
        """``{"test": {...}, "val": {...}}`` for one fold, ``{"fold1/test": ...}`` for several."""
        folds = {r["fold"] for r in self.rows}
        out = {}
        for r in self.rows:
            key = r["set"] if len(folds) == 1 else f"{r['fold']}/{r['set']}"
            out[key] = {k: v for k, v in r.items() if k not in ("fold", "set")}
            if key in self.confusions or f"{r['fold']}/{r['set']}" in self.confusions:
                out[key]["confusion"] = self.confusions[f"{r['fold']}/{r['set']}"]
        return out

    def summary(self, eval_set: str = "test") -> dict[str, float]:
        """Mean over folds of one evaluation set (e.g. "test")."""
        rows = [r for r in self.rows if r["set"] == eval_set]
        keys = [k for k in SHOW[self.task] if rows and k in rows[0]]
        return {k: float(np.nanmean([r[k] for r in rows])) for k in keys} if rows else {}

    def __str__(self) -> str:
        return self.table()

    def table(self) -> str:
        keys = [k for k in SHOW[self.task] if self.rows and k in self.rows[0]]
        head = f"{'fold':<18} {'set':<12} {'n':>6} " + " ".join(f"{k:>11}" for k in keys)
        lines = [f"head={self.config.head} modalities={'+'.join(self.modalities)} "
                 f"protocol={self.protocol['name']} seed={self.config.seed} "
                 f"missing={self.missing_report.get('policy', '-')}"
                 f" (kept {self.missing_report.get('kept', '?')}, dropped {self.missing_report.get('dropped', 0)})",
                 head, "-" * len(head)]
        for r in self.rows:
            vals = " ".join(f"{r.get(k, float('nan')):>11.4f}" for k in keys)
            lines.append(f"{r['fold']:<18} {r['set']:<12} {r.get('n', ''):>6} {vals}")
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``metrics.json`` (per split) and ``combined_results.csv`` (predictions)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        payload = {
            "head": self.config.head, "modalities": self.modalities, "task": self.task,
            "classes": self.classes, "protocol": self.protocol, "config": self.config.to_dict(),
            "missing": self.missing_report, "spec_ids": self.spec_ids,
            "splits": self.metrics_by_split(), "summary": self.summary(),
        }
        paths = {"metrics": out / "metrics.json", "predictions": out / "combined_results.csv"}
        atomic_write_bytes(paths["metrics"], json.dumps(payload, indent=2, default=_jsonable).encode())
        self.predictions.write_csv(paths["predictions"])
        return paths


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def evaluate(model: Fitted, data: FusionData, ci: int = 0, seed: int = 0) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of ``model`` on ``data`` and its raw outputs (probabilities or values)."""
    out = model.predict(data)
    if data.task == "classification":
        pred = out.argmax(1)
        return score("classification", data.y, pred, len(data.classes), ci=ci, seed=seed), out
    return score("regression", data.y, out, ci=ci, seed=seed), out


def _prediction_frame(data: FusionData, out: np.ndarray, fold: str, eval_set: str) -> pl.DataFrame:
    cols: dict[str, Any] = {"clip_id": data.clip_ids, "fold": [fold] * data.n, "set": [eval_set] * data.n}
    if data.task == "classification":
        cols["label"] = [data.classes[i] for i in data.y]
        cols["pred"] = [data.classes[i] for i in out.argmax(1)]
        for k, c in enumerate(data.classes):
            cols[f"prob_{c}"] = out[:, k].astype(np.float64)
    else:
        cols["label_value"] = data.y.astype(np.float64)
        cols["pred_value"] = out.astype(np.float64)
    return pl.DataFrame(cols)


def run(
    data: FusionData, config: TrainConfig, protocol: str | dict[str, Any] = "splits", *,
    ci: int = 0, keep_models: bool = False, predict_sets: Sequence[str] | None = None,
) -> Result:
    """Fit one head per fold of ``protocol`` and score every evaluation set of each fold.

    ``predict_sets``: evaluation sets whose per-clip predictions are kept (default: all but train).
    Cross-lingual folds add ``retention:<lang>`` rows (cross score / in-language score).
    """
    p = normalize(protocol)
    rows: list[dict[str, Any]] = []
    preds: list[pl.DataFrame] = []
    confusions: dict[str, list[list[int]]] = {}
    models, outputs = [], {}
    for fold in make_folds(data, p, seed=config.seed):
        model = fit(data.take(fold.train), data.take(fold.val), config)
        if keep_models:
            models.append(model)
        for name, idx in fold.tests.items():
            part = data.take(idx)
            metrics, out = evaluate(model, part, ci=ci, seed=config.seed)
            rows.append({"fold": fold.name, "set": name, **metrics,
                         "best_epoch": model.best_epoch, "seconds": round(model.seconds, 4)})
            if data.task == "classification" and part.n:
                from clmer_fusion.metrics import confusion
                confusions[f"{fold.name}/{name}"] = confusion(part.y, out.argmax(1), len(data.classes)).tolist()
            if (predict_sets is None and name != "train") or (predict_sets is not None and name in predict_sets):
                preds.append(_prediction_frame(part, out, fold.name, name))
                outputs[f"{fold.name}/{name}"] = out
        if p["name"] == "crosslingual":
            rows.extend(_retention(rows, fold.name, data.task))
    return Result(config=config, protocol=p, modalities=list(data.modalities), task=data.task,
                  classes=list(data.classes), rows=rows,
                  predictions=pl.concat(preds) if preds else pl.DataFrame(),
                  confusions=confusions, missing_report=dict(data.missing_report),
                  spec_ids=dict(data.spec_ids), models=models, outputs=outputs)


def _retention(rows: list[dict[str, Any]], fold: str, task: str) -> list[dict[str, Any]]:
    mine = {r["set"]: r for r in rows if r["fold"] == fold}
    src = next(k for k in mine if k.startswith("in:"))
    keys = [k for k in SHOW[task] if k in mine[src] and k != "mae"]
    out = []
    for name, r in mine.items():
        if name.startswith("cross:"):
            ret = {k: (r[k] / mine[src][k] if mine[src][k] else float("nan")) for k in keys}
            out.append({"fold": fold, "set": "retention:" + name[6:], **ret})
    return out


def request_level(head: str, pool: str) -> tuple[str, str]:
    """(level, store pooling) a head needs: the temporal head and attention pooling read frame rows."""
    if head == "temporal" or pool == "attention":
        return "frame", "mean"
    return "utterance", pool


def train_from_store(
    manifest_path: str | Path, cache_dir: str | Path, features: Sequence[str], head: str = "mlp", *,
    protocol: str | dict[str, Any] = "splits", target: str = "label", missing: str = "drop",
    pool: str = "mean", seed: int = 0, ci: int = 0, dataset: str | None = None,
    spec_ids: dict[str, str] | None = None, out_dir: str | Path | None = None, check_fresh: bool = False,
    **options: Any,
) -> Result:
    """Load ``features`` for the manifest's clips from the store, train ``head``, score it.

    ``options`` are ``TrainConfig`` fields (lr, hidden, batch_size, max_epochs, patience,
    class_weights, ...). The temporal head and ``pool="attention"`` read frame-level sequences.
    The manifest gives ids and labels only; its media are not read unless ``check_fresh``.
    """
    from clmer_fusion.request import Request, load

    cfg = TrainConfig.from_dict({"head": head, "seed": seed,
                                 "pool": "attention" if pool == "attention" else "mean", **options})
    level, store_pool = request_level(head, pool)
    req = Request.create(manifest_path, cache_dir, features, spec_ids=spec_ids, target=target, level=level,
                         pool=store_pool, missing=missing, dataset=dataset, check_fresh=check_fresh)
    result = run(load(req), cfg, protocol, ci=ci)
    if out_dir is not None:
        result.save(out_dir)
    return result
