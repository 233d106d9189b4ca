"""One synthetic feature for the store's protocol tests (local disk and S3): clip ``c0007``
holds ``7 % 5 + 1`` rows of 16 values all equal to 7 (and times 0, 1, ...), so any lost,
duplicated or misplaced row shows. Writers also run as separate processes
(``writer_process``) to test concurrency and kills."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from clmer_features.spec import FeatureSpec
from clmer_features.store import open_store, part_name
from clmer_features.store import layout as L
from clmer_features.store.maintenance import verify

SPEC = FeatureSpec.create("emb", model_id="synthetic", params={"dim": 16})


def ids(lo: int, hi: int) -> list[str]:
    return [f"c{i:04d}" for i in range(lo, hi)]


def rows(i: int) -> np.ndarray:
    return np.full((i % 5 + 1, 16), i, np.float32)


def write_parts(cache, ranges, dataset: str = "ds", pause: float = 0.0):
    """One part per ``(lo, hi)`` range; returns the feature writer (not finalized)."""
    fw = open_store(cache, dataset, create=True).feature_writer(SPEC)
    for lo, hi in ranges:
        with fw.part(part_name(ids(lo, hi))) as p:
            for cid in ids(lo, hi):
                i = int(cid[1:])
                p.add(cid, cid, rows(i), times=np.arange(i % 5 + 1, dtype=np.float32))
                if pause:
                    time.sleep(pause)  # overlap in time with other writers
    return fw


def check(cache, n: int, dataset: str = "ds") -> None:
    """The finalized store holds exactly clips 0..n-1 with their rows and times, and verifies clean."""
    store = open_store(cache, dataset)
    r = store.feature("emb")
    want = ids(0, n)
    assert sorted(r.clip_ids) == want
    values, offsets = r.sequences(want)
    for k, cid in enumerate(want):
        i = int(cid[1:])
        assert np.array_equal(values[offsets[k] : offsets[k + 1]], rows(i)), cid
    assert r.times("c0003").tolist() == [0.0, 1.0, 2.0, 3.0]
    rep = verify(store)
    assert rep.ok, rep.problems


def writer_process(cache, lo: int, hi: int, *, finalize: bool = False, hang: bool = False) -> subprocess.Popen:
    """``write_parts`` in another process, parts of 25 clips over ``[lo, hi)``, printing "done"
    at the end (``hang``: prints "writing" and blocks just before a part's PART.json, its data on disk)."""
    args = [str(cache), str(lo), str(hi), str(int(finalize)), str(int(hang))]
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import _synthetic_store as s; s._main(sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)


def _main(argv: list[str]) -> None:
    cache, lo, hi, finalize, hang = argv[0], int(argv[1]), int(argv[2]), argv[3] == "1", argv[4] == "1"
    if hang:
        orig = L.atomic_write_json

        def hanging(path, obj):
            if path.name == L.PART_FILE:
                print("writing", flush=True)
                time.sleep(600)
            return orig(path, obj)

        L.atomic_write_json = hanging
    fw = write_parts(cache, [(a, min(hi, a + 25)) for a in range(lo, hi, 25)], pause=0.002)
    if finalize:
        print("done", fw.finalize().clips, flush=True)
    else:
        print("done", flush=True)
