"""Crash safety and concurrency of the part/finalize protocol, with real processes."""
import os
import signal
import time

from clmer_features.store import open_store
from clmer_features.store.maintenance import gc

from _synthetic_store import SPEC, check, writer_process

def run_writer(cache, lo, hi, mode="normal"):
    return writer_process(cache, lo, hi, hang=mode == "hang")


def check_all(cache, n):
    assert open_store(cache, "ds").finalize("emb", SPEC.spec_id).clips == n
    check(cache, n)


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
