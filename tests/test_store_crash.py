"""Crash safety and concurrency of the part/finalize protocol, with real processes."""
import os
import signal
import subprocess
import sys
import textwrap
import time


from clmer_features.spec import FeatureSpec
from clmer_features.store import open_store
from clmer_features.store.maintenance import gc, verify

SPEC = FeatureSpec.create("emb", model_id="synthetic", params={"dim": 16})

WRITER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from clmer_features.spec import FeatureSpec
    from clmer_features.store import open_store, part_name
    from clmer_features.store import layout as L
    cache, lo, hi, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    spec = FeatureSpec.create("emb", model_id="synthetic", params={"dim": 16})
    fw = open_store(cache, "ds", create=True).feature_writer(spec)
    if mode == "hang":  # block just before PART.json: the part's data is on disk, unfinished
        orig = L.atomic_write_json
        def hang(path, obj):
            if path.name == L.PART_FILE:
                print("writing", flush=True); time.sleep(600)
            return orig(path, obj)
        L.atomic_write_json = hang
    for start in range(lo, hi, 25):
        ids = [f"c{i:04d}" for i in range(start, min(hi, start + 25))]
        with fw.part(part_name(ids)) as p:
            for cid in ids:
                i = int(cid[1:])
                p.add(cid, cid, np.full((i % 5 + 1, 16), i, np.float32))
                time.sleep(0.002)  # overlap in time with the other writers
    print("done", flush=True)
    """
)


def run_writer(cache, lo, hi, mode="normal"):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(cache), str(lo), str(hi), mode], stdout=subprocess.PIPE, text=True)


def check_all(cache, n):
    store = open_store(cache, "ds")
    summary = store.finalize("emb", SPEC.spec_id)
    assert summary.clips == n
    r = store.feature("emb")
    ids = [f"c{i:04d}" for i in range(n)]
    assert sorted(r.clip_ids) == ids
    values, offsets = r.sequences(ids)
    for k, cid in enumerate(ids):
        i = int(cid[1:])
        rows = values[offsets[k] : offsets[k + 1]]
        assert rows.shape == (i % 5 + 1, 16) and (rows == i).all(), cid
    rep = verify(store)
    assert rep.ok, rep.problems


def test_four_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    cache = tmp_path / "cache"
    # 4 writers over overlapping time; the last two also repeat each other's range (a retried task)
    procs = [run_writer(cache, 0, 100), run_writer(cache, 100, 200), run_writer(cache, 200, 300), run_writer(cache, 200, 300)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and "done" in out
    check_all(cache, 300)


def test_sigkill_mid_part_leaves_nothing_visible_and_rerun_completes(tmp_path):
    cache = tmp_path / "cache"
    p = run_writer(cache, 0, 50, mode="hang")
    assert p.stdout.readline().strip() == "writing"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    store = open_store(cache, "ds")
    fw = store.feature_writer(SPEC)
    tmp = list(fw.parts_dir.glob(".tmp-*"))
    assert len(tmp) == 1 and (tmp[0] / "values").exists()  # killed with data half-written
    assert fw.done_keys() == set()
    assert store.finalize("emb", SPEC.spec_id).clips == 0
    assert len(store.feature("emb")) == 0
    p2 = run_writer(cache, 0, 50)
    assert "done" in p2.communicate(timeout=120)[0]
    check_all(cache, 50)
    old = time.time() - 7200
    os.utime(tmp[0], (old, old))
    assert gc(store).removed_tmp == tmp
