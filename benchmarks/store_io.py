"""Store I/O benchmark: the clmer store against per-clip .npy files, HDF5 and one flat .npy.

Synthetic data: 20,000 clips of about 30 rows each, 768-d float16 (~0.9 GB).
Every store read checks the checksums of what it read (as every clmer read does).
One run prints a table of times and ratios and records it in benchmarks/results/store_io.md,
with the machine's `uptime` before and after (the machine is shared: run it under
`flock /tmp/clmer-heavy.lock`).

    .venv/bin/python benchmarks/store_io.py [--clips 20000] [--out DIR]
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

import h5py
import numpy as np

from clmer_features.spec import FeatureSpec
from clmer_features.store import open_store, part_name

D = 768
PART_CLIPS = 256


def evict(paths: list[Path]) -> None:
    """Drop files from the page cache (cold reads)."""
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for p in files:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=20_000)
    ap.add_argument("--random", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir on the same disk as /tmp)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "store_io.md")
    args = ap.parse_args()
    up_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 41, size=args.clips)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total_rows = int(offsets[-1])
    flat = rng.standard_normal((total_rows, D), dtype=np.float32).astype(np.float16)
    ids = [f"clip{i:06d}" for i in range(args.clips)]
    nbytes = flat.nbytes
    work = Path(tempfile.mkdtemp(prefix="clmer-io-", dir=args.workdir))
    rows: list[tuple[str, str, float, float, str]] = []
    try:
        # ---------------------------------------------------------------- writes
        spec = FeatureSpec.create("bench", model_id="synthetic", params={"dim": D})
        store = open_store(work / "cache", "bench", create=True)

        def write_store():
            shutil.rmtree(store.root / "features", ignore_errors=True)
            fw = store.feature_writer(spec)
            for lo in range(0, args.clips, PART_CLIPS):
                hi = min(lo + PART_CLIPS, args.clips)
                with fw.part(part_name(ids[lo:hi])) as p:
                    for i in range(lo, hi):
                        p.add(ids[i], ids[i], flat[offsets[i] : offsets[i + 1]])
            fw.finalize()

        def synced(fn):
            os.sync()
            t = time.perf_counter()
            fn()
            t_write = time.perf_counter() - t
            os.sync()
            return t_write, time.perf_counter() - t

        t_store_w, t_store_ws = synced(write_store)
        npy_dir = work / "npy"

        def write_npy():
            shutil.rmtree(npy_dir, ignore_errors=True)
            npy_dir.mkdir()
            for i, cid in enumerate(ids):
                np.save(npy_dir / f"{cid}.npy", flat[offsets[i] : offsets[i + 1]])

        t_npy_w, t_npy_ws = synced(write_npy)
        h5_path = work / "feats.h5"

        def write_h5():
            with h5py.File(h5_path, "w") as f:
                f.create_dataset("values", data=flat)
                f.create_dataset("offsets", data=offsets)

        t_h5_w, t_h5_ws = synced(write_h5)
        flat_path = work / "flat.npy"
        np.save(flat_path, flat)

        mb = nbytes / 1e6
        rows.append(("write", "per-clip .npy", t_npy_w, mb / t_npy_w, "baseline"))
        rows.append(("write", "clmer store (parts + finalize)", t_store_w, mb / t_store_w, f"{t_npy_w / t_store_w:.2f}x faster than per-clip .npy (need >= 300 MB/s)"))
        rows.append(("write", "HDF5 (one dataset)", t_h5_w, mb / t_h5_w, f"{t_npy_w / t_h5_w:.2f}x faster"))
        rows.append(("write + os.sync to disk", "per-clip .npy", t_npy_ws, mb / t_npy_ws, "baseline"))
        rows.append(("write + os.sync to disk", "clmer store", t_store_ws, mb / t_store_ws, f"{t_npy_ws / t_store_ws:.2f}x faster"))
        rows.append(("write + os.sync to disk", "HDF5 (one dataset)", t_h5_ws, mb / t_h5_ws, f"{t_npy_ws / t_h5_ws:.2f}x faster"))

        reader = open_store(work / "cache", "bench").feature("bench")
        order = ids  # the reader returns rows in the order asked

        # ---------------------------------------------------------------- full read, warm
        def read_store_all():
            return reader.sequences(order)[0]

        def read_npy_all():
            return [np.load(npy_dir / f"{c}.npy") for c in ids]

        def read_h5_all():
            with h5py.File(h5_path, "r") as f:
                return f["values"][:]

        def read_flat():
            return np.load(flat_path)

        read_store_all(); read_flat()  # warm the page cache
        t_flat, _ = timed(read_flat)
        t_sall, got = timed(read_store_all)
        assert np.array_equal(got, flat), "store read-back differs"
        t_nall, _ = timed(read_npy_all)
        t_hall, _ = timed(read_h5_all)
        rows.append(("full read, warm", "np.load one flat file", t_flat, mb / t_flat, "baseline"))
        rows.append(("full read, warm", "clmer store", t_sall, mb / t_sall, f"{t_sall / t_flat:.2f}x the time of np.load (need <= 1.5x)"))
        rows.append(("full read, warm", "per-clip .npy", t_nall, mb / t_nall, f"{t_nall / t_flat:.2f}x"))
        rows.append(("full read, warm", "HDF5", t_hall, mb / t_hall, f"{t_hall / t_flat:.2f}x"))

        # ---------------------------------------------------------------- full read, cold
        def cold(fn, paths):
            evict(paths)
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

        c_store = min(cold(read_store_all, [store.root]) for _ in range(2))
        c_npy = min(cold(read_npy_all, [npy_dir]) for _ in range(2))
        c_flat = min(cold(read_flat, [flat_path]) for _ in range(2))
        c_h5 = min(cold(read_h5_all, [h5_path]) for _ in range(2))
        rows.append(("full read, cold", "per-clip .npy", c_npy, mb / c_npy, "baseline"))
        rows.append(("full read, cold", "clmer store", c_store, mb / c_store, f"{c_npy / c_store:.1f}x faster than per-clip .npy (need >= 3x)"))
        rows.append(("full read, cold", "np.load one flat file", c_flat, mb / c_flat, f"{c_npy / c_flat:.1f}x faster"))
        rows.append(("full read, cold", "HDF5", c_h5, mb / c_h5, f"{c_npy / c_h5:.1f}x faster"))
        rows.append(("full read, cold", "clmer store / HDF5", c_store, mb / c_store, f"{c_store / c_h5:.2f}x the time of HDF5 (need <= 1.2x)"))

        # ---------------------------------------------------------------- random clips, warm
        pick = [ids[i] for i in rng.choice(args.clips, size=args.random, replace=False)]
        read_store_all(); read_npy_all()
        t_rs, got = timed(lambda: reader.get_many(pick))
        for cid, g in zip(pick[:50], got[:50]):
            i = int(cid[4:])
            assert np.array_equal(g, flat[offsets[i] : offsets[i + 1]])
        t_rn, _ = timed(lambda: [np.load(npy_dir / f"{c}.npy") for c in pick])

        def h5_random():
            with h5py.File(h5_path, "r") as f:
                v = f["values"]
                return [v[offsets[int(c[4:])] : offsets[int(c[4:]) + 1]] for c in pick]

        t_rh, _ = timed(h5_random)
        t_rloop, _ = timed(lambda: [reader.get(c) for c in pick[:200]], repeat=1)
        t_rloop *= args.random / 200
        rmb = sum(lengths[int(c[4:])] for c in pick) * D * 2 / 1e6
        rows.append((f"{args.random} random clips, warm", "per-clip .npy", t_rn, rmb / t_rn, "baseline"))
        rows.append((f"{args.random} random clips, warm", "clmer store get_many", t_rs, rmb / t_rs, f"{t_rs / t_rn:.2f}x the time of .npy (need <= 2x)"))
        rows.append((f"{args.random} random clips, warm", "clmer store, get() per clip", t_rloop, rmb / t_rloop, f"{t_rloop / t_rn:.1f}x (the naive loop; estimated from 200)"))
        rows.append((f"{args.random} random clips, warm", "HDF5 slice per clip", t_rh, rmb / t_rh, f"{t_rh / t_rn:.2f}x"))
        rows.append((f"{args.random} random clips, warm", "clmer store get_many / HDF5", t_rs, rmb / t_rs, f"{t_rs / t_rh:.2f}x the time of HDF5 (need <= 1.2x)"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    up_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    header = (
        f"# Store I/O benchmark\n\n{args.clips} clips, {total_rows} rows x {D} float16 ({nbytes / 1e6:.0f} MB); "
        f"parts of {PART_CLIPS} clips. Machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()} "
        f"(shared with other work). Every store read checks the checksums of the rows it read. "
        f"Reads: best of 3 (cold: best of 2 after posix_fadvise DONTNEED); writes: one each, into the page cache, then with os.sync to disk. "
        f"One run of `python benchmarks/store_io.py`.\n\n"
        f"`uptime` before: `{up_before}`  \n`uptime` after: `{up_after}`\n\n"
    )
    table = "| case | method | seconds | MB/s | ratio |\n|---|---|---:|---:|---|\n" + "".join(
        f"| {c} | {m} | {t:.3f} | {r:.0f} | {x} |\n" for c, m, t, r, x in rows
    )
    print(header + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + table)


if __name__ == "__main__":
    main()
