"""Heads benchmark: the fast grid vs a usual research training loop, and Shapley recovery.

Data: 10,000 synthetic clips, 3 modalities, utterance level, a known signal share per modality
(clmer_fusion.synthetic: each clip's label is visible in at most one modality, drawn with
probabilities 0.5 / 0.3 / 0.2, so the exact Shapley shares of accuracy equal those numbers).

1. Grid: 7 modality subsets x 3 heads (linear, mlp, attention) x 3 seeds, manifest-style splits,
   full-batch fast path (clmer_fusion.bench.run_grid). Target: <= 120 s on 2 cores.
2. Research loop on the same data and heads (all 3 modalities, the same 3 seeds): DataLoader,
   batch 32, 100 epochs, Adam lr 1e-3, validation every epoch, best-validation checkpoint. Target:
   the fast path is >= 10x faster per fit at equal or better test accuracy (mean over seeds).
3. Shapley shares (from the grid, mean over seeds) vs the known shares. Target: within 5 points.

Run: .venv/bin/python benchmarks/heads.py [--clips 10000] [--research-epochs 100] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from clmer_fusion.bench import run_grid, write_outputs
from clmer_fusion.fit import _stats
from clmer_fusion.heads import build_head
from clmer_fusion.protocols import make_folds
from clmer_fusion.record import git_revision, machine, package_versions
from clmer_fusion.synthetic import make_synthetic

SHARES = (0.5, 0.3, 0.2)
MODS = ("text", "audio", "visual")
HEADS = ("linear", "mlp", "attention")


def research_loop(train, val, test, head: str, epochs: int, seed: int = 0, hidden: int = 64) -> dict:
    """The usual loop: minibatches of 32 from a DataLoader, validate every epoch, keep the best."""
    torch.manual_seed(seed)
    stats = _stats(train, True)

    def tensors(d):
        xs = [torch.from_numpy((d.x[m] - mu) / sd) for m, (mu, sd) in zip(d.modalities, stats)]
        return TensorDataset(*xs, torch.from_numpy(d.y))

    model = build_head(head, train.dims, train.n_out, hidden=hidden, dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(tensors(train), batch_size=32, shuffle=True)
    val_loader = DataLoader(tensors(val), batch_size=256)
    test_loader = DataLoader(tensors(test), batch_size=256)
    m = len(train.modalities)

    def accuracy(dl) -> float:
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for *xs, y in dl:
                out = model(list(xs), None, torch.ones(len(y), m, dtype=torch.bool))["out"]
                correct += int((out.argmax(1) == y).sum())
                total += len(y)
        return correct / total

    t0 = time.perf_counter()
    best, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        for *xs, y in loader:
            out = model(list(xs), None, torch.ones(len(y), m, dtype=torch.bool))
            loss = torch.nn.functional.cross_entropy(out["out"], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = accuracy(val_loader)
        if acc > best:
            best, best_state = acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return {"seconds": time.perf_counter() - t0, "test_war": accuracy(test_loader), "val_war": best}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=64, help="feature dimension per modality")
    ap.add_argument("--research-epochs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (both loops)")
    ap.add_argument("--research-seeds", type=int, default=3, help="seeds of the research loop (<= 3)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    syn = {"n": args.clips, "dims": [args.dim] * 3, "shares": list(SHARES), "sep": 6.0, "seed": 0,
           "modalities": list(MODS)}
    cfg = {"synthetic": syn, "heads": list(HEADS), "subsets": "all", "seeds": [0, 1, 2],
           "protocols": ["splits"], "threads": args.threads, "explain": True,
           "train": {"hidden": 64}}     # defaults otherwise: batch 1024, lr 3e-3, patience 10, select war
    data = make_synthetic(**syn)

    t0 = time.perf_counter()
    grid = run_grid(cfg, data=data, progress=True)
    grid_wall = time.perf_counter() - t0
    grid.record["provenance"] = {"source": "synthetic", "synthetic": syn}

    fold = make_folds(data, "splits")[0]
    train, val, test = (data.take(fold.train), data.take(fold.val), data.take(fold.tests["test"]))
    rows = grid.rows
    research = {}
    seeds = list(range(args.research_seeds))
    for head in HEADS:
        runs = [research_loop(train, val, test, head, args.research_epochs, seed=seed) for seed in seeds]
        fast = rows.filter((rows["head"] == head) & (rows["subset"] == "+".join(MODS)) & rows["seed"].is_in(seeds)
                           & (rows["set"] == "test"))
        r_sec, f_sec = float(np.mean([r["seconds"] for r in runs])), float(fast["seconds"].mean())
        research[head] = {"seeds": seeds, "research_seconds": r_sec,
                          "research_test_war": float(np.mean([r["test_war"] for r in runs])),
                          "research_test_war_per_seed": [r["test_war"] for r in runs],
                          "fast_seconds": f_sec, "fast_test_war": float(fast["war"].mean()),
                          "fast_test_war_per_seed": fast["war"].to_list(),
                          "fast_best_epoch": fast["best_epoch"].to_list(), "speedup": r_sec / f_sec}
    load_after = os.getloadavg()

    shap = {h: grid.shapley[f"splits/{h}"]["shares"] for h in HEADS}
    err = {h: max(abs(shap[h][m] - s) for m, s in zip(MODS, SHARES)) * 100 for h in HEADS}
    fits = len(rows.filter(rows["set"] == "test"))
    ok_time = grid_wall <= 120
    n_test = len(test.y)
    se = {h: float(np.sqrt(v["research_test_war"] * (1 - v["research_test_war"]) / n_test)) for h, v in research.items()}
    ok_fast = all(v["speedup"] >= 10 for v in research.values())
    ok_acc_strict = all(v["fast_test_war"] >= v["research_test_war"] for v in research.values())
    ok_acc_noise = all(v["fast_test_war"] >= v["research_test_war"] - se[h] for h, v in research.items())
    ok_speed = ok_fast and ok_acc_noise
    ok_shap = all(e <= 5 for e in err.values())

    lines = [f"# Heads benchmark ({args.clips} clips, 3 x {args.dim}-d modalities, utterance level)", "",
             f"machine: {machine()}; torch threads {args.threads}; load average before "
             f"{load_before[0]:.2f}, after {load_after[0]:.2f}", "",
             f"Grid: {fits} fits (7 subsets x 3 heads x 3 seeds, splits protocol) in {grid_wall:.1f} s "
             f"(target <= 120 s): {'PASS' if ok_time else 'FAIL'}", "",
             f"Per fit, all 3 modalities, mean over seeds {seeds} (test set: {n_test} clips; one binomial "
             f"standard error of WAR is about {np.mean(list(se.values())):.4f}):", "",
             "| head | research loop s/fit | research test WAR | fast path s/fit | fast best epochs | fast test WAR | speedup |",
             "|---|---|---|---|---|---|---|"]
    for h, v in research.items():
        lines.append(f"| {h} | {v['research_seconds']:.2f} | {v['research_test_war']:.4f} | {v['fast_seconds']:.3f} | "
                     f"{v['fast_best_epoch']} | {v['fast_test_war']:.4f} | {v['speedup']:.1f}x |")
    est = np.mean([v["research_seconds"] for v in research.values()]) * fits
    lines += ["", f"Research loop: batch 32, {args.research_epochs} epochs, validation every epoch; "
              f"the same 63-fit grid that way would take about {est:.0f} s. ", "",
              f"- >= 10x faster per fit, every head: {'PASS' if ok_fast else 'FAIL'}",
              f"- test WAR >= research loop's, every head (strict): {'PASS' if ok_acc_strict else 'FAIL'}",
              f"- test WAR >= research loop's minus one standard error, every head: {'PASS' if ok_acc_noise else 'FAIL'}",
              "",
              "| head | " + " | ".join(f"{m} share (known {s})" for m, s in zip(MODS, SHARES)) + " | max error (points) |",
              "|---|---|---|---|---|"]
    for h in HEADS:
        lines.append(f"| {h} | " + " | ".join(f"{shap[h][m]:.3f}" for m in MODS) + f" | {err[h]:.2f} |")
    lines += ["", f"Shapley recovery (each head within 5 points): {'PASS' if ok_shap else 'FAIL'}", "",
              "Shapley: exact, over the 7 subsets trained by the grid plus the empty set (train-prior "
              "predictor), on test UAR, mean over seeds; share = value / sum of values.",
              "Rerun the grid and compare every number: "
              "`clmer-fusion bench --check benchmarks/results/heads_grid/record.json`.", "",
              "## Grid table (test set, mean ± std over 3 seeds)", "", grid.table]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heads.md").write_text(text + "\n")
    grid_dir = out / "heads_grid"
    write_outputs(grid, grid_dir)
    (out / "heads.json").write_text(json.dumps({
        "clips": args.clips, "dim": args.dim, "threads": args.threads, "load_before": load_before,
        "load_after": load_after, "grid_seconds": grid_wall, "fits": fits, "research": research,
        "shapley_shares": shap, "shapley_error_points": err, "known_shares": dict(zip(MODS, SHARES)),
        "pass": {"time": ok_time, "speed_10x": ok_fast, "accuracy_strict": ok_acc_strict,
                 "accuracy_within_one_se": ok_acc_noise, "shapley": ok_shap},
        "versions": package_versions(), "revision": git_revision(), "machine": machine(),
    }, indent=2))
    return 0 if (ok_time and ok_speed and ok_shap) else 1


if __name__ == "__main__":
    sys.exit(main())
