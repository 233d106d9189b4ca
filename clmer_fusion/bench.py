"""Benchmark grids: heads x modality subsets x seeds x protocols -> tables, plots, a run record.

Config (YAML), every key optional except a data source:
    manifest: clips.csv          # data from a store ...
    cache: cache
    features: [bert, emotion2vec, siglip]
    # synthetic: {n: 10000}      # ... or synthetic data (clmer_fusion.synthetic.make_synthetic kwargs)
    target: label                # or label_value
    missing: drop                # or embed
    level: utterance             # or frame (temporal head; train: {pool: attention})
    heads: [linear, mlp, attention]
    subsets: all                 # or [[bert], [bert, siglip]]
    seeds: [0, 1, 2]
    protocols: [splits]          # or {name: kfold, k: 5} ...
    train: {lr: 0.01}            # TrainConfig options for every head
    head_options: {mlp: {hidden: 256}}
    explain: true                # Shapley over subsets (needs subsets: all)
    threads: 1                   # torch CPU threads per process (1 is fastest for small heads)
    workers: 1                   # processes for the grid (2 on a 2-core machine); same numbers
    spec_ids: {bert: 094219969c06}   # which spec of a feature, where the store holds several
    check_fresh: false           # true: refuse features whose media changed since extraction
    out: runs/bench              # relative to the working directory (default runs/<config name>)
Relative ``manifest`` and ``cache`` paths are read from the config's folder; the manifest gives
ids, labels and splits only (its media are not read).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from clmer_features.errors import ClmerError
from clmer_features.store.layout import atomic_write_bytes
from clmer_fusion.data import FusionData
from clmer_fusion.explain import all_subsets, explain_outputs, format_share, prior_of, shares_of
from clmer_fusion.metrics import primary_metric
from clmer_fusion.protocols import make_folds, normalize
from clmer_fusion.record import digest, file_sha256, git_revision, machine, package_versions
from clmer_fusion.gridrun import run_jobs
from clmer_fusion.request import Request, load, open_sources
from clmer_fusion.train import SHOW

ID_COLS = ["protocol", "head", "subset", "seed", "fold", "set"]


def load_config(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.exists():
        raise ClmerError(f"{p}: no such config file")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ClmerError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(cfg, dict):
        raise ClmerError(f"{p}: expected a mapping at the top level")
    base = p.resolve().parent
    for key in ("manifest", "cache"):              # data paths: relative to the config's folder
        if key in cfg and "://" not in str(cfg[key]) and not Path(cfg[key]).is_absolute():
            cfg[key] = str(base / cfg[key])
    cfg["out"] = str(Path(cfg.get("out") or Path("runs") / p.stem).resolve())   # outputs: the working directory
    return cfg


def load_data(cfg: dict[str, Any]) -> tuple[FusionData, dict[str, Any]]:
    """The grid's data and its provenance (manifest fingerprint, spec ids)."""
    if "synthetic" in cfg:
        from clmer_fusion.synthetic import make_synthetic

        data = make_synthetic(**(cfg["synthetic"] or {})).apply_missing(cfg.get("missing", "drop"))
        return data, {"source": "synthetic", "synthetic": cfg["synthetic"]}
    for key in ("manifest", "cache", "features"):
        if key not in cfg:
            raise ClmerError(f"bench config needs '{key}' (or a 'synthetic' section)")
    src = open_sources(request_of(cfg))
    data = load(src)
    prov = {"source": "store", "manifest": str(cfg["manifest"]), "manifest_sha256": file_sha256(cfg["manifest"]),
            "spec_ids": data.spec_ids, "clips": data.n, "missing": data.missing_report,
            "manifest_fingerprint": src.fingerprint()}
    return data, prov


def request_of(cfg: dict[str, Any]) -> Request:
    """The data request a store-backed config makes (``spec_ids: {feature: spec_id}`` chooses specs)."""
    return Request.create(cfg["manifest"], cfg["cache"], list(cfg["features"]), spec_ids=cfg.get("spec_ids"),
                          target=cfg.get("target", "label"), level=cfg.get("level", "utterance"),
                          pool=cfg.get("pool", "mean"), missing=cfg.get("missing", "drop"),
                          dataset=cfg.get("dataset"), check_fresh=bool(cfg.get("check_fresh", False)))


def _subsets(cfg: dict[str, Any], mods: list[str]) -> list[list[str]]:
    spec = cfg.get("subsets", "all")
    if spec == "all":
        return [[m for m in mods if m in s] for s in all_subsets(mods)[1:]]
    if spec == "full":
        return [mods]
    out = []
    for s in spec:
        s = [s] if isinstance(s, str) else list(s)
        bad = [m for m in s if m not in mods]
        if bad:
            raise ClmerError(f"subset {s}: unknown modality {bad}; features are {mods}")
        out.append(s)
    return out


@dataclass
class BenchOutput:
    rows: pl.DataFrame
    table: str
    shapley: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    confusions: dict[str, list[list[int]]] = field(default_factory=dict)   # "protocol/head" (all modalities)
    classes: list[str] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def run_grid(cfg: dict[str, Any], data: FusionData | None = None, progress: bool = True) -> BenchOutput:
    """Train and score every (protocol, head, subset, seed); Shapley per (protocol, head, seed)."""
    import torch

    torch.set_num_threads(int(cfg.get("threads", 1)))
    prov: dict[str, Any] = {"source": "in-memory"}
    if data is None:
        data, prov = load_data(cfg)
    mods = list(data.modalities)
    heads = list(cfg.get("heads", ["linear", "mlp", "attention"]))
    seeds = [int(s) for s in cfg.get("seeds", [0])]
    protocols = [normalize(p) for p in cfg.get("protocols", ["splits"])]
    subsets = _subsets(cfg, mods)
    want_explain = bool(cfg.get("explain", True)) and len(subsets) == 2 ** len(mods) - 1
    jobs = [(p, h, s, seed) for p in protocols for h in heads for s in subsets for seed in seeds]
    rows: list[dict[str, Any]] = []
    outs: dict[tuple, np.ndarray] = {}
    confusions: dict[str, list[list[int]]] = {}
    t0 = time.perf_counter()
    from tqdm import tqdm

    specs = [(p, h, s, seed, {**cfg.get("train", {}), **cfg.get("head_options", {}).get(h, {})})
             for p, h, s, seed in jobs]
    results = run_jobs(data, specs, workers=int(cfg.get("workers", 1)), threads=int(cfg.get("threads", 1)))
    for res, (p, h, s, seed) in zip(tqdm(results, total=len(jobs), desc="grid", unit="job",
                                         disable=not progress), jobs):
        name = "+".join(s)
        for r in res["rows"]:
            rows.append({"protocol": p["name"], "head": h, "subset": name, "seed": seed, **r})
        for key, out in res["outputs"].items():
            outs[(p["name"], h, frozenset(s), seed, key)] = out
        if len(s) == len(mods) and seed == seeds[0] and res["confusions"]:
            test_keys = [k for k in res["confusions"] if k.endswith("/test")] or list(res["confusions"])
            confusions[f"{p['name']}/{h}"] = res["confusions"][test_keys[0]]
    seconds = time.perf_counter() - t0
    frame = pl.DataFrame(rows, infer_schema_length=None)
    shap = _shapley(data, protocols, heads, seeds, outs, cfg) if want_explain else {}
    record = {"config": cfg, "provenance": prov, "versions": package_versions(), "revision": git_revision(),
              "machine": machine(), "grid_seconds": round(seconds, 3), "fits": len(jobs), "workers": int(cfg.get("workers", 1)),
              "rows_digest": digest(_metric_rows(frame)), "rows": _metric_rows(frame),
              "shapley": {k: v["metric_shapley"] for k, v in shap.items()}}
    return BenchOutput(rows=frame, table=markdown_table(frame, data.task), shapley=shap, record=record,
                       seconds=seconds, confusions=confusions, classes=list(data.classes))


def _metric_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows without timing columns (timings differ run to run; metrics must not)."""
    return frame.drop([c for c in ("seconds",) if c in frame.columns]).to_dicts()


def _shapley(data, protocols, heads, seeds, outs, cfg) -> dict[str, Any]:
    """Per (protocol, head): Shapley on the first fold's test set, averaged over seeds."""
    mods = list(data.modalities)
    result: dict[str, Any] = {}
    metric = cfg.get("metric") or primary_metric(data.task)
    for p in protocols:
        for h in heads:
            per_seed = []
            for seed in seeds:
                fold = make_folds(data, p, seed=seed)[0]
                ev_name = "test" if "test" in fold.tests else next(k for k in fold.tests if k not in ("train", "val"))
                ev = data.take(fold.tests[ev_name])
                key = f"{fold.name}/{ev_name}"
                subset_outs = {s: outs[(p["name"], h, s, seed, key)] for s in all_subsets(mods)[1:]}
                per_seed.append(explain_outputs(ev, subset_outs, prior_of(data.take(fold.train)), metric))
                where = {"fold": fold.name, "set": ev_name}
            phi = {m: float(np.mean([e.metric_shapley[m] for e in per_seed])) for m in mods}
            shares, note = shares_of(phi, metric)
            groups = pl.concat(e.groups for e in per_seed).group_by("group", maintain_order=True).agg(
                pl.col("n").first(), *[pl.col(m).mean() for m in mods])
            result[f"{p['name']}/{h}"] = {
                "metric": metric, "metric_shapley": phi,
                "shares": shares, "shares_note": note, **where,
                "subset_scores": {k: float(np.mean([e.subset_scores[k] for e in per_seed]))
                                  for k in per_seed[0].subset_scores},
                "groups": groups.to_dicts(),
            }
    return result


def markdown_table(frame: pl.DataFrame, task: str) -> str:
    """Mean +- std over seeds (of the per-seed mean over folds), test-like sets only."""
    if frame.is_empty():
        return "(no results)"
    keys = [k for k in SHOW[task] if k in frame.columns]
    ev = frame.filter(~pl.col("set").is_in(["train", "val"]))
    ev = ev.with_columns(pl.col("set").str.replace(r"^(in|cross|retention):.*$", "${1}"))
    per_seed = ev.group_by(["protocol", "head", "subset", "set", "seed"], maintain_order=True).agg(
        [pl.col(k).mean() for k in keys])
    agg = per_seed.group_by(["protocol", "head", "subset", "set"], maintain_order=True).agg(
        [pl.col(k).mean().alias(k) for k in keys] + [pl.col(k).std(ddof=0).alias(f"{k}_std") for k in keys]
        + [pl.len().alias("seeds")])
    lines = ["| protocol | head | modalities | set | seeds | " + " | ".join(keys) + " |",
             "|" + "---|" * (5 + len(keys))]
    for r in agg.iter_rows(named=True):
        cells = [f"{r[k]:.4f} ± {r[k + '_std']:.4f}" for k in keys]
        lines.append(f"| {r['protocol']} | {r['head']} | {r['subset']} | {r['set']} | {r['seeds']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def shapley_markdown(shap: dict[str, Any]) -> str:
    lines = []
    for key, v in shap.items():
        mods = list(v["metric_shapley"])
        where = f"{v['fold']}, set {v['set']}; " if v.get("fold") else ""
        lines += [f"### {key}: Shapley on {v['metric']} ({where}mean over seeds)", "",
                  "| modality | shapley | share |", "|---|---|---|"]
        lines += [f"| {m} | {v['metric_shapley'][m]:.4f} | {format_share(v['shares'][m])} |" for m in mods]
        if v.get("shares_note"):
            lines += ["", v["shares_note"]]
        lines += ["", "| group | n | " + " | ".join(mods) + " |", "|" + "---|" * (2 + len(mods))]
        lines += [f"| {g['group']} | {g['n']} | " + " | ".join(f"{g[m]:.4f}" for m in mods) + " |"
                  for g in v["groups"]]
        lines.append("")
    return "\n".join(lines)


def write_outputs(out: BenchOutput, out_dir: str | Path) -> dict[str, str]:
    """results.parquet/csv, table.md, shapley.{md,json}, shapley.png, confusion_*.png, record.json
    (written last, so a record's presence means the rest is there)."""
    from clmer_fusion.plots import confusion_png, shapley_bars

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": d / "results.parquet", "csv": d / "results.csv", "table": d / "table.md",
             "record": d / "record.json"}
    out.rows.write_parquet(paths["parquet"])
    out.rows.write_csv(paths["csv"])
    paths["table"].write_text(out.table + "\n")
    if out.shapley:
        paths["shapley"] = d / "shapley.md"
        paths["shapley"].write_text(shapley_markdown(out.shapley))
        (d / "shapley.json").write_text(json.dumps(out.shapley, indent=2))
        mods = list(next(iter(out.shapley.values()))["metric_shapley"])
        paths["shapley_png"] = shapley_bars({k: v["metric_shapley"] for k, v in out.shapley.items()}, mods,
                                            d / "shapley.png")
    for key, cm in out.confusions.items():
        name = "confusion_" + key.replace("/", "_")
        paths[name] = confusion_png(cm, out.classes, d / f"{name}.png", title=f"{key} (all modalities, test)")
    atomic_write_bytes(paths["record"], json.dumps(out.record, indent=2, default=str).encode())
    out.paths = {k: str(v) for k, v in paths.items()}
    return out.paths


def check(record_path: str | Path, progress: bool = True) -> list[str]:
    """Rerun the grid of a record and list every metric that differs (empty: identical)."""
    rec = json.loads(Path(record_path).read_text())
    cfg = dict(rec["config"])
    if rec["provenance"].get("manifest_sha256") and Path(cfg["manifest"]).exists():
        now = file_sha256(cfg["manifest"])
        if now != rec["provenance"]["manifest_sha256"]:
            return [f"manifest {cfg['manifest']} changed: sha256 {now[:12]} != recorded "
                    f"{rec['provenance']['manifest_sha256'][:12]}"]
    new = run_grid(cfg, progress=progress)
    old_rows = {tuple(r[c] for c in ID_COLS): r for r in rec["rows"]}
    new_rows = {tuple(r[c] for c in ID_COLS): r for r in _metric_rows(new.rows)}
    diffs = []
    for key in ("spec_ids", "manifest_fingerprint"):
        if rec["provenance"].get(key) != new.record["provenance"].get(key):
            diffs.append(f"{key}: recorded {rec['provenance'].get(key)} != now {new.record['provenance'].get(key)}")
    diffs += [f"missing in rerun: {k}" for k in old_rows if k not in new_rows]
    diffs += [f"new in rerun: {k}" for k in new_rows if k not in old_rows]
    for k in old_rows.keys() & new_rows.keys():
        a, b = old_rows[k], new_rows[k]
        for col in sorted(set(a) | set(b)):
            va, vb = a.get(col), b.get(col)
            same = va == vb or (isinstance(va, float) and isinstance(vb, float) and np.isnan(va) and np.isnan(vb))
            if not same:
                diffs.append(f"{'/'.join(map(str, k))}: {col} {va!r} -> {vb!r}")
    return sorted(diffs)
