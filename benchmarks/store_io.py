"""Store I/O benchmark: the clmer store against per-clip .npy files, HDF5 and one flat .npy.

Synthetic data: 20,000 clips of about 30 rows each, 768-d float16 (~0.9 GB).
Every store read checks the checksums of what it read (as every clmer read does).
One run prints a table of times and ratios and records it in benchmarks/results/store_io.md,
with the machine's `uptime` before and after (the machine is shared: run it under
`flock /tmp/clmer-heavy.lock`).

    .venv/bin/python benchmarks/store_io.py [--clips 20000] [--compare-write main] [--out FILE]

``--compare-write REV`` (repeatable) also times the store writer of git revision REV
(its ``clmer_features`` from ``git archive``) against this tree's, each in a fresh process
on the same data, alternating, in the same run.

Cold reads are cold for this machine's page cache: every file is dropped with
``posix_fadvise(DONTNEED)`` after ``os.sync()`` (dirty pages cannot be dropped), and
``fincore`` confirms what stayed resident. A cold store read opens the store afresh (index,
metadata, shards), as a new process would, like the HDF5 read opens its file; methods
alternate within each repetition so that they share the machine's state.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from clmer_features.spec import FeatureSpec
from clmer_features.store import open_store, part_name

D = 768
PART_CLIPS = 256
COLD_REPEAT = 3  # cold full reads: best of this many, the methods alternating, each read twice in a row
RANDOM_REPEAT = 9  # random-clip reads: best of this many, the methods alternating


def _files(paths: list[Path]) -> list[Path]:
    return [f for root in paths for f in ([root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()))]


def evict(paths: list[Path]) -> None:
    """Drop files from the page cache (cold reads); dirty pages stay, so sync first."""
    os.sync()
    for p in _files(paths):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident(paths: list[Path]) -> int | None:
    """Bytes of ``paths`` in the page cache (``fincore``), or None without it."""
    if not shutil.which("fincore"):
        return None
    files = [str(p) for p in _files(paths)]
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *files], capture_output=True, text=True)
    return sum(int(x) for x in out.stdout.split()) if out.returncode == 0 else None


def write_parts(root: Path, flat: np.ndarray, offsets: np.ndarray) -> float:
    """Write ``flat`` (rows of the clips ``offsets`` delimits) as one store; seconds, finalize included."""
    ids = [f"clip{i:06d}" for i in range(len(offsets) - 1)]
    spec = FeatureSpec.create("bench", model_id="synthetic", params={"dim": flat.shape[1]})
    store = open_store(root, "bench", create=True)
    t = time.perf_counter()
    fw = store.feature_writer(spec)
    for lo in range(0, len(ids), PART_CLIPS):
        hi = min(lo + PART_CLIPS, len(ids))
        with fw.part(part_name(ids[lo:hi])) as p:
            for i in range(lo, hi):
                p.add(ids[i], ids[i], flat[offsets[i] : offsets[i + 1]])
    fw.finalize()
    return time.perf_counter() - t


def compare_writes(revs: list[str], work: Path, flat_path: Path, offsets_path: Path, repeat: int = 2) -> list[tuple[str, float]]:
    """Seconds of the writers of git revisions ``revs`` and of this tree, each in a fresh
    process, alternating."""
    repo = Path(__file__).resolve().parent.parent
    trees = []
    for rev in revs:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", rev], capture_output=True, text=True, check=True).stdout.strip()
        old = work / f"rev-{sha}"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "clmer_features"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        trees.append((f"{rev} ({sha})", old))
    trees.append(("this tree", repo))
    best: dict[str, float] = {}
    for k in range(repeat):
        for n, (label, tree) in enumerate(trees):
            target = work / f"w-{k}-{n}"
            env = {**os.environ, "PYTHONPATH": str(tree)}
            out = subprocess.run([sys.executable, __file__, "--write-only", str(target), str(flat_path), str(offsets_path)],
                                 capture_output=True, text=True, env=env, check=True).stdout
            best[label] = min(best.get(label, float("inf")), float(out.split()[-1]))
            shutil.rmtree(target, ignore_errors=True)
            os.sync()
    return list(best.items())


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--write-only":  # a process of --compare-write
        root, flat_path, offsets_path = map(Path, sys.argv[2:])
        print(write_parts(root, np.load(flat_path), np.load(offsets_path)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare-write", metavar="REV", action="append", default=[], help="also time the writer of this git revision (repeatable)")
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
    merged_parts: list[int] = []
    try:
        # ---------------------------------------------------------------- writes
        store = open_store(work / "cache", "bench", create=True)

        def write_store():
            shutil.rmtree(store.root, ignore_errors=True)
            write_parts(store.root.parent, flat, offsets)

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
        offsets_path = work / "offsets.npy"
        np.save(offsets_path, offsets)
        os.sync()
        compared = compare_writes(args.compare_write, work, flat_path, offsets_path) if args.compare_write else []

        mb = nbytes / 1e6
        rows.append(("write", "per-clip .npy", t_npy_w, mb / t_npy_w, "baseline"))
        rows.append(("write", "clmer store (parts + finalize)", t_store_w, mb / t_store_w, f"{t_npy_w / t_store_w:.2f}x faster than per-clip .npy (need >= 300 MB/s)"))
        rows.append(("write", "HDF5 (one dataset)", t_h5_w, mb / t_h5_w, f"{t_npy_w / t_h5_w:.2f}x faster"))
        rows.append(("write + os.sync to disk", "per-clip .npy", t_npy_ws, mb / t_npy_ws, "baseline"))
        rows.append(("write + os.sync to disk", "clmer store", t_store_ws, mb / t_store_ws, f"{t_npy_ws / t_store_ws:.2f}x faster"))
        rows.append(("write + os.sync to disk", "HDF5 (one dataset)", t_h5_ws, mb / t_h5_ws, f"{t_npy_ws / t_h5_ws:.2f}x faster"))
        for label, t in compared:
            rows.append(("write, a fresh process each, same data, best of 2", f"clmer store, {label}", t, mb / t,
                         f"{compared[0][1] / t:.2f}x the speed of {compared[0][0]}"))

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
        def read_store_fresh():  # a new reader: index, metadata and shards opened cold too
            return open_store(work / "cache", "bench").feature("bench").sequences(order)[0]

        def read_h5_sliced():  # HDF5 read in 64 MiB slices: one 921 MB pread can be slow on a VM disk
            with h5py.File(h5_path, "r") as f:
                d = f["values"]
                out = np.empty(d.shape, d.dtype)
                step = max(1, (64 << 20) // (d.shape[1] * d.dtype.itemsize))
                for lo in range(0, d.shape[0], step):
                    d.read_direct(out, np.s_[lo : lo + step], np.s_[lo : lo + step])
                return out

        done = open_store(work / "cache", "bench").feature("bench")  # its parts (finalize merged the small ones)
        shard_files = [done.dir / "parts" / name / "values" / "c" / "0" / "0" for name in done.complete["part_names"]]
        merged_parts.append(len(shard_files))

        def read_shard_files():  # the floor for the store: its value files read front to back, 8 MiB at a time
            for path in shard_files:
                with open(path, "rb", buffering=0) as fh:
                    while fh.read(8 << 20):
                        pass

        methods = [("clmer store", read_store_fresh, [store.root]), ("per-clip .npy", read_npy_all, [npy_dir]),
                   ("np.load one flat file", read_flat, [flat_path]), ("HDF5", read_h5_all, [h5_path]),
                   ("HDF5, 64 MiB slices", read_h5_sliced, [h5_path]),
                   ("the store's value files, read in 8 MiB blocks (no checks)", read_shard_files, [store.root])]
        # Each method is read cold twice in a row: this VM's page cache is dropped before each read,
        # but the host behind its virtual disk caches what was read last, so the first read of a
        # file after the other methods' files runs at the device's speed and the second at the
        # host cache's (measured here: HDF5 in one read 7 s, then 0.5 s). "again" is the
        # reproducible cold read (this machine's cache empty, the device fast, as with NVMe), and
        # the store is judged on it; "first" is printed too.
        cold_t: dict[tuple[str, str], float] = {}
        left: dict[str, int | None] = {}
        for _ in range(COLD_REPEAT):  # the methods alternate: each repetition sees the machine in one state
            for name, fn, paths in methods:
                for when in ("first", "again"):
                    evict([work])
                    res = resident(paths)
                    left[name] = None if res is None else max(res, left.get(name) or 0)
                    t = time.perf_counter()
                    fn()
                    cold_t[name, when] = min(cold_t.get((name, when), float("inf")), time.perf_counter() - t)
        for when, case in (("again", "full read, cold (read again: the host's cache warm)"), ("first", "full read, cold (first read: device speed)")):
            c_store, c_npy, c_flat, c_h5_one, c_h5_sliced, c_floor = (cold_t[m[0], when] for m in methods)
            c_h5 = min(c_h5_one, c_h5_sliced)  # the store is held to the faster way of reading HDF5
            need = " (need <= 1.2x)" if when == "again" else ""
            rows.append((case, "per-clip .npy", c_npy, mb / c_npy, "baseline"))
            rows.append((case, "clmer store (opened afresh)", c_store, mb / c_store, f"{c_npy / c_store:.1f}x faster than per-clip .npy" + (" (need >= 3x)" if need else "")))
            rows.append((case, "np.load one flat file", c_flat, mb / c_flat, f"{c_npy / c_flat:.1f}x faster"))
            rows.append((case, "HDF5, one read", c_h5_one, mb / c_h5_one, f"{c_npy / c_h5_one:.1f}x faster"))
            rows.append((case, "HDF5, 64 MiB slices", c_h5_sliced, mb / c_h5_sliced, f"{c_npy / c_h5_sliced:.1f}x faster"))
            rows.append((case, "the store's value files, 8 MiB reads, no checks", c_floor, mb / c_floor, f"{c_npy / c_floor:.1f}x faster (the floor of the store's layout)"))
            rows.append((case, "clmer store / its files' floor", c_store, mb / c_store, f"{c_store / c_floor:.2f}x the time of reading its files"))
            rows.append((case, "clmer store / HDF5 (the faster HDF5 read)", c_store, mb / c_store, f"{c_store / c_h5:.2f}x the time of HDF5{need}"))

        # ---------------------------------------------------------------- random clips, warm
        pick = [ids[i] for i in rng.choice(args.clips, size=args.random, replace=False)]
        read_store_all(); read_npy_all()
        got = reader.get_many(pick)
        for cid, g in zip(pick[:50], got[:50]):
            i = int(cid[4:])
            assert np.array_equal(g, flat[offsets[i] : offsets[i + 1]])

        def h5_random():
            with h5py.File(h5_path, "r") as f:
                v = f["values"]
                return [v[offsets[int(c[4:])] : offsets[int(c[4:]) + 1]] for c in pick]

        rand = {"store": lambda: reader.get_many(pick), "npy": lambda: [np.load(npy_dir / f"{c}.npy") for c in pick], "h5": h5_random}
        best: dict[str, float] = {}
        for _ in range(RANDOM_REPEAT):  # ~30 ms each: the methods alternate, best of many
            for k, fn in rand.items():
                best[k] = min(best.get(k, float("inf")), timed(fn, repeat=1)[0])
        t_rs, t_rn, t_rh = best["store"], best["npy"], best["h5"]
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
        f"written in parts of {PART_CLIPS} clips (an extraction partition each), which finalize merged into "
        f"{merged_parts[0] if merged_parts else '?'} parts. Machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()} "
        f"(shared with other work). Every store read checks the checksums of the rows it read. "
        f"Reads: best of 3 (random clips: best of {RANDOM_REPEAT}, the methods alternating). Cold reads: best of {COLD_REPEAT}, the methods alternating, each method read twice in a row (first, again), each read after os.sync and posix_fadvise(DONTNEED) "
        f"of every file (bytes still in the page cache right before a cold read, most seen: "
        f"{', '.join(f'{k} {v}' for k, v in left.items())}; None: no fincore); the cold store read opens the store afresh. "
        f"The disk is a VM's virtio disk: the host may cache it. "
        f"Writes: one each, into the page cache, then with os.sync to disk. "
        f"One run of `python benchmarks/store_io.py{''.join(' --compare-write ' + r for r in args.compare_write)}`.\n\n"
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
