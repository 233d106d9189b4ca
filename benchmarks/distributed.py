"""Dask extraction benchmark: 1 versus 2 local workers, per-task overhead, a rerun with nothing to do.

The same manifest (``--clips`` clips cut from a few short ffmpeg videos) and a
small random SigLIP (``--image-size``/``--hidden``) go through:

- the in-process engine (reference);
- a LocalCluster of 1 worker and of 2 workers (1 torch thread each, as Dask
  sets OMP_NUM_THREADS=1): a cold run (the worker loads the model) and a warm
  run into a fresh cache (model already loaded: the steady state of a long run);
- per-task overhead: ``--noop-tasks`` trivial tasks on the 2-worker cluster;
- a rerun with nothing to do, in-process and on Dask (plan only; no task).

Scaling efficiency = (warm time with 1 worker / warm time with 2 workers) / 2.
One run; the machine is shared, so `uptime` load is recorded with the table.

    .venv/bin/python benchmarks/distributed.py [--clips 48] [--out benchmarks/results/distributed.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the `distributed` package: keep its folder off the import path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def make_data(root: Path, clips: int, image_size: int, hidden: int) -> tuple[Path, Path]:
    from clmer_features import testing as T

    models = root / "models"
    T.make_tiny_siglip(models, image_size=image_size, hidden=hidden)
    videos = [T.make_video(root / f"v{i}.mp4", 6.0, size=(160, 120), freq=300.0 + 100 * i) for i in range(4)]
    rows = [{"clip_id": f"c{i:04d}", "video": str(videos[i % 4]), "start": 0.05 * (i // 4),
             "end": 0.05 * (i // 4) + 5.0} for i in range(clips)]
    return T.write_manifest(root / "clips.csv", rows), models


def run(manifest: Path, models: Path, cache: Path, partition: int, **kw) -> tuple[float, object]:
    from clmer_features.engine import extract

    t0 = time.perf_counter()
    s = extract(manifest, ["siglip"], cache, models_dir=models, device="cpu", partition_size=partition,
                progress=False, **kw)
    return time.perf_counter() - t0, s


def noop(x: int) -> int:
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--partition-size", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--noop-tasks", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "distributed.md")
    a = ap.parse_args()

    from distributed import wait

    from clmer_features.distributed import DaskRunner, dask_client
    from clmer_features.runtime import clear_model_cache, worker_counters

    root = Path(tempfile.mkdtemp(prefix="clmer-bench-dist-"))
    rows: list[tuple[str, float, str]] = []
    load_before = loadavg()
    try:
        manifest, models = make_data(root, a.clips, a.image_size, a.hidden)
        P = a.partition_size
        nparts = -(-a.clips // P)
        t_local, s_local = run(manifest, models, root / "local", P)
        rows.append(("in-process engine (2 torch threads + decoder process), first run", t_local,
                     f"{a.clips / t_local:.2f} clips/s, model load {s_local.features['siglip'].load_s:.2f}s"))
        t_local2, _ = run(manifest, models, root / "local2", P)
        rows.append(("in-process engine, second run (model cached in process)", t_local2,
                     f"{a.clips / t_local2:.2f} clips/s"))
        t_noop_local, _ = run(manifest, models, root / "local", P)
        warm: dict[int, float] = {}
        for n in (1, 2):
            t0 = time.perf_counter()
            with dask_client(workers=n, log=lambda m: None) as client:
                t_start = time.perf_counter() - t0
                rows.append((f"LocalCluster({n} worker{'s' if n > 1 else ''}) start", t_start, ""))
                client.run(clear_model_cache)
                t_cold, s_cold = run(manifest, models, root / f"d{n}-cold", P,
                                     runner=DaskRunner(client, log=lambda m: None))
                loads = sum(sum(c["loads"].values()) for c in client.run(worker_counters).values())
                rows.append((f"{n} worker(s), cold (each worker loads the model)", t_cold,
                             f"{a.clips / t_cold:.2f} clips/s, {nparts} tasks, {loads} model load(s)"))
                t_warm, _ = run(manifest, models, root / f"d{n}-warm", P, runner=DaskRunner(client, log=lambda m: None))
                warm[n] = t_warm
                rows.append((f"{n} worker(s), warm (models already loaded)", t_warm, f"{a.clips / t_warm:.2f} clips/s"))
                if n == 2:
                    t_rerun, _ = run(manifest, models, root / "d2-warm", P,
                                     runner=DaskRunner(client, log=lambda m: None))
                    rows.append(("rerun with nothing to do, Dask (plan only, no task)", t_rerun,
                                 f"in-process: {t_noop_local:.3f}s"))
                    futs = client.map(noop, range(a.noop_tasks), pure=False)  # warm up the path
                    wait(futs)
                    del futs
                    t0 = time.perf_counter()
                    futs = client.map(noop, range(a.noop_tasks), pure=False)
                    wait(futs)
                    t_noop = time.perf_counter() - t0
                    rows.append((f"{a.noop_tasks} no-op tasks on 2 workers", t_noop,
                                 f"{1000 * t_noop / a.noop_tasks:.2f} ms per task"))
        eff = warm[1] / warm[2] / 2
        speedup = warm[1] / warm[2]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = loadavg()

    lines = [
        "# Distributed extraction (Dask LocalCluster) benchmark",
        "",
        f"Machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}; shared with other "
        f"engineers: load average (1/5/15 min) {load_before} before, {load_after} after. One run.",
        f"Data: {a.clips} clips of 5 s cut from 160x120 H.264 videos (3 frames each at one per 2 s), "
        f"siglip = random SigLIP vision tower, image {a.image_size}, hidden {a.hidden}; "
        f"{nparts} partitions of {P} clips (one Dask task each).",
        "",
        "| what | seconds | notes |",
        "|---|---:|---|",
        *[f"| {w} | {t:.3f} | {n} |" for w, t, n in rows],
        "",
        f"Warm 1 -> 2 workers: speed-up {speedup:.2f}x, scaling efficiency {eff:.0%} "
        f"(2 cores; each worker also runs one decoder process).",
        f"Rerun with nothing to do on Dask / in-process: "
        f"{[t for w, t, _ in rows if w.startswith('rerun')][0] / t_noop_local:.2f}x.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(f"recorded in {a.out}")


if __name__ == "__main__":
    main()
