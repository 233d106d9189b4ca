"""Object-store benchmark: the same store on a local S3 API server and on local disk.

Synthetic data: clips of about 30 rows each, 768-d float16, written through the store's
writer (parts of ``--part-clips`` clips) once to local disk and once to an S3 server on
localhost (moto's server mode, started here). For each layout it times, with a fresh
reader each time (index and part metadata included):

- a full scan (``sequences()`` of every clip),
- 1000 random clips (``sequences(ids)``, in random order),

and counts the requests the S3 reads made. Requests follow the number of shards (parts),
not the number of clips: the rows of a part come in one range request (or one per group of
nearby clips), parts are fetched concurrently. moto is a single Python process that keeps
objects in memory: the S3 times here measure clmer's request pattern plus moto's
overhead, not a real service's bandwidth.

One run prints a table and records it in benchmarks/results/object_store.md with the
machine's `uptime` before and after (run it under `flock /tmp/clmer-heavy.lock`).

    .venv/bin/python benchmarks/object_store.py [--clips 4000] [--part-clips 64,256,1024]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from clmer_features.spec import FeatureSpec
from clmer_features.store import open_store, part_name
from clmer_features.testing_s3 import count_requests, new_bucket, s3_server

D = 768
SPEC = FeatureSpec.create("emb", model_id="synthetic", params={"dim": D})


def clip_rows(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 41, size=n)
    return [rng.standard_normal((int(k), D)).astype(np.float16) for k in lengths]


def write(cache: str, rows: list[np.ndarray], part_clips: int) -> float:
    t = time.perf_counter()
    fw = open_store(cache, "bench", create=True).feature_writer(SPEC)
    ids = [f"c{i:06d}" for i in range(len(rows))]
    for lo in range(0, len(ids), part_clips):
        chunk = ids[lo:lo + part_clips]
        with fw.part(part_name(chunk)) as p:
            for cid in chunk:
                p.add(cid, cid, rows[int(cid[1:])])
    fw.finalize()
    return time.perf_counter() - t


def read(cache: str, ids: list[str] | None, repeat: int = 3) -> tuple[float, int, int]:
    """Best time of ``repeat`` reads with a fresh reader; (seconds, requests, bytes)."""
    best, requests, nbytes = float("inf"), 0, 0
    for _ in range(repeat):
        before = count_requests()
        t = time.perf_counter()
        r = open_store(cache, "bench").feature("emb")
        values, _ = r.sequences(ids)
        best = min(best, time.perf_counter() - t)
        requests, nbytes = count_requests() - before, values.nbytes
        r.close()
    return best, requests, nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=4000)
    ap.add_argument("--part-clips", default="64,256,1024", help="clips per part (one shard each), comma-separated")
    ap.add_argument("--random", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "object_store.md")
    args = ap.parse_args()
    up_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    sizes = [int(x) for x in args.part_clips.split(",")]
    rng = np.random.default_rng(1)
    table: list[dict] = []
    with s3_server() as env, tempfile.TemporaryDirectory(prefix="clmer-objbench-") as tmp:
        os.environ.update(env)
        mid = sizes[len(sizes) // 2]
        # all the clips in each layout; then half the clips in parts half as large: the same shards
        for n, layouts in ((args.clips, sizes), (args.clips // 2, [max(1, mid // 2)])):
            rows = clip_rows(n)
            sample = [f"c{i:06d}" for i in rng.choice(n, size=min(args.random, n), replace=False)]
            for pc in layouts:
                local = str(Path(tmp) / f"local-{n}-{pc}")
                s3 = f"s3://{new_bucket(env)}/cache"
                w_local, w_s3 = write(local, rows, pc), write(s3, rows, pc)
                row = {"clips": n, "part_clips": pc, "shards": -(-n // pc), "write_local": w_local, "write_s3": w_s3}
                for what, ids in (("scan", None), ("random", sample)):
                    t_local, _, nbytes = read(local, ids)
                    t_s3, req, _ = read(s3, ids)
                    row.update({f"{what}_local": t_local, f"{what}_s3": t_s3, f"{what}_requests": req,
                                f"{what}_mb": nbytes / 1e6})
                table.append(row)
                print(row, flush=True)
                shutil.rmtree(local, ignore_errors=True)
    up_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    head = ("| clips | clips/part | shards | scan MB | scan local s | scan S3 s | scan requests | "
            f"{args.random} random MB | random local s | random S3 s | random requests | write local s | write S3 s |")
    lines = [head, "|" + "---|" * 13]
    for r in table:
        lines.append(
            f"| {r['clips']} | {r['part_clips']} | {r['shards']} | {r['scan_mb']:.0f} | {r['scan_local']:.3f} | "
            f"{r['scan_s3']:.3f} | {r['scan_requests']} | {r['random_mb']:.1f} | {r['random_local']:.3f} | "
            f"{r['random_s3']:.3f} | {r['random_requests']} | {r['write_local']:.2f} | {r['write_s3']:.2f} |"
        )
    text = "\n".join(
        [
            "# Object store: a local S3 server (moto) against local disk",
            "",
            f"`{' '.join(['.venv/bin/python', 'benchmarks/object_store.py', '--clips', str(args.clips), '--part-clips', args.part_clips])}`",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
            "Synthetic clips of 20-40 rows, 768-d float16; every read checksummed (as every clmer read is); "
            "times are the best of 3 with a fresh reader (index and part metadata read each time). "
            "Requests: every request the S3 reads made (index, clips.parquet, COMPLETE.json, spec and part "
            "metadata, shard index, row ranges).",
            "",
            f"uptime before: `{up_before}`",
            f"uptime after:  `{up_after}`",
            "",
            *lines,
            "",
            "Requests per scan follow the number of shards, not the number of clips: about 2 per part (its "
            "shard index and one range of rows; the parts' metadata comes consolidated in the spec's zarr.json) "
            "plus a fixed number per store (dataset, spec, index, clips metadata); the last row holds half the clips in parts half as large, "
            "as many shards as the row of the same shard count above, and makes as many requests. "
            f"{args.random} random clips cost one range request per part they touch (clips of a part less than "
            "1 MiB apart share one request). moto is one Python process holding the objects in memory: its "
            "per-request cost (milliseconds) dominates the S3 times, so a real service's times depend on its "
            "latency and bandwidth; the request counts are what carries over.",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
