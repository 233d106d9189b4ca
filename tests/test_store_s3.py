"""The store on object storage (S3 API), against a real S3 server on localhost (moto)."""
from __future__ import annotations

import os
import time

import pytest

from clmer_features.errors import StoreError
from clmer_features.store import open_store, part_name
from clmer_features.store import layout as L
from clmer_features.store.maintenance import gc, verify

from _extract_helpers import tiny_models  # noqa: F401  (fixture)
from _fault_runner import KILLED, OBJECT_POINTS
from _synthetic_store import SPEC, check, write_parts, writer_process

def test_unservable_url_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=r"gs://b/x: clmer cannot serve gs:// caches"):
        open_store("gs://b/x", "ds", create=True)
    assert not any(tmp_path.iterdir())  # no local folder named 'gs:'


def test_write_finalize_read_verify(s3_cache):
    fw = write_parts(s3_cache, [(0, 30), (30, 50)])
    first = fw.find_part(part_name([f"c{i:04d}" for i in range(30)]))
    assert first is not None and first.name.startswith(part_name([f"c{i:04d}" for i in range(30)]) + L.TWIN_SEP)
    assert write_parts(s3_cache, [(0, 30)]).committed_parts() == fw.committed_parts()  # a retry keeps the first
    s = fw.finalize()
    assert (s.clips, s.parts, s.duplicates) == (50, 2, 0)
    check(s3_cache, 50)


# --------------------------------------------------------------------------- kill -9, rerun, verify
@pytest.fixture(scope="module")
def s3_faults(tiny_models, tmp_path_factory, s3_env):
    """The store-faults case (bert on 9 clips, a clean local-disk run as the reference) and a
    fault runner whose forked runs reach the S3 server."""
    from test_store_faults import load_script

    saved = {k: os.environ.get(k) for k in s3_env}
    os.environ.update(s3_env)
    bench = load_script()
    case = bench.make_case(tmp_path_factory.mktemp("s3-faults"), models=tiny_models, features=("bert",))
    runner = bench.Runner()
    yield bench, case, runner
    runner.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow
@pytest.mark.parametrize("point", OBJECT_POINTS)
def test_a_rerun_after_a_kill_on_s3_equals_a_local_disk_run(s3_faults, s3_cache, point, tmp_path):
    """Killed (os._exit, like kill -9) right after each commit point of the rename-free protocol,
    a plain rerun leaves an S3 store equal to a clean local-disk run's, and verify is clean."""
    bench, case, runner = s3_faults
    rc = runner.run(point, 1, bench.cli_args(case, case.full, s3_cache), tmp_path / "run.log")
    assert rc == KILLED, (tmp_path / "run.log").read_text()[-2000:]
    bench.extract_in_process(case, case.full, s3_cache)
    rep = verify(open_store(s3_cache, "clips"))
    assert rep.ok, rep.problems
    assert bench.store_difference(case.reference, s3_cache, case.features) is None


def test_the_s3_comparison_sees_a_difference(s3_faults, s3_cache):
    """The comparison above can fail: an S3 store of fewer clips differs from the local run."""
    bench, case, _ = s3_faults
    bench.extract_in_process(case, case.small, s3_cache)
    assert bench.store_difference(case.reference, s3_cache, case.features) is not None


# --------------------------------------------------------------------------- concurrency
def test_two_concurrent_clients_lose_and_duplicate_nothing(s3_cache):
    """Two processes write overlapping ranges (two partitions twice: twin parts) and both finalize
    at about the same time; the store holds every clip once, and verify is clean."""
    procs = [writer_process(s3_cache, lo, hi, finalize=True) for lo, hi in ((0, 100), (50, 150))]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and out.startswith("done"), out
    store = open_store(s3_cache, "ds")
    s = store.finalize("emb", SPEC.spec_id)
    assert s.clips == 150 and s.parts in (6, 7, 8) and s.duplicates == 25 * (s.parts - 6)
    index = L.read_parquet(store.feature("emb").dir / L.INDEX_FILE)
    assert index.height == 150 and index["clip_key"].n_unique() == 150
    check(s3_cache, 150)


def test_a_finalize_that_loses_the_race_for_complete_starts_over(s3_cache, monkeypatch):
    """COMPLETE.json is a conditional put: a finalize whose record changed under it (another
    client finalized meanwhile, after a new part) starts over, and the last record names every part."""
    from clmer_features.store import writer as W

    fw = write_parts(s3_cache, [(0, 10)])
    fw.finalize()
    consolidate, calls = L.consolidate_spec, []

    def other_client_finalizes_meanwhile(fdir, parts):
        calls.append(len(parts))
        if len(calls) == 1:
            write_parts(s3_cache, [(10, 20)])
            W.finalize_feature(fw.root, "emb", SPEC.spec_id)  # wins: COMPLETE.json changes
        consolidate(fdir, parts)

    monkeypatch.setattr(L, "consolidate_spec", other_client_finalizes_meanwhile)
    s = fw.finalize()
    assert calls == [1, 2, 2] and (s.clips, s.parts) == (20, 2)  # ours (1 part) lost, started over
    check(s3_cache, 20)


def test_unmarked_parts_are_invisible_and_gc_removes_them_past_the_bound(s3_cache, monkeypatch):
    from clmer_features.store.objpath import ObjPath

    fw = write_parts(s3_cache, [(0, 10)])
    put = ObjPath.write_bytes

    def crash_before_marker(self, data, **kw):
        if self.name == L.PART_FILE:
            raise KeyboardInterrupt  # the process dies here: data uploaded, no marker
        return put(self, data, **kw)

    monkeypatch.setattr(ObjPath, "write_bytes", crash_before_marker)
    with pytest.raises(KeyboardInterrupt):
        write_parts(s3_cache, [(10, 20)])
    monkeypatch.setattr(ObjPath, "write_bytes", put)
    marked, unmarked = L.object_parts(fw.dir)
    assert len(marked) == 1 and len(unmarked) == 1
    assert fw.finalize().clips == 10 and fw.find_part(part_name([f"c{i:04d}" for i in range(10, 20)])) is None
    store = open_store(s3_cache, "ds")
    kept = gc(store, older_than_s=3600)
    assert len(kept.kept_tmp) == 1 and not kept.removed_tmp  # a writer may be at work
    gone = gc(store, older_than_s=0)
    assert len(gone.removed_tmp) == 1 and L.object_parts(fw.dir) == (marked, {})
    write_parts(s3_cache, [(10, 20)])  # the rerun
    fw.finalize()
    check(s3_cache, 20)


def test_object_leases_are_taken_once_and_expire(s3_cache):
    from clmer_features.store.lease import ObjectLeases, open_leases

    root = open_store(s3_cache, "ds", create=True).root
    a, b = open_leases(root, ttl_s=2.0), open_leases(root, ttl_s=2.0)  # S3 times have whole seconds
    assert isinstance(a, ObjectLeases)
    b.me["host"] = "elsewhere"  # a's pid check does not apply to b: only the heartbeat's age
    assert a.acquire("p1") and not b.acquire("p1") and a.acquire("p1")  # ours again: fine
    time.sleep(3.1)  # a's heartbeat thread is not running: the lease expires
    assert b.acquire("p1") and b.taken_over == ["p1"] and not a.acquire("p1")
    b.release("p1")
    assert a.acquire("p1")
    a.release("p1")
    assert not (root / "leases" / "p1.json").is_file()


def test_cli_verify_gc_and_refusal_on_s3(s3_cache, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from clmer_features.cli import cli

    write_parts(s3_cache, [(0, 10)]).finalize()
    r = CliRunner().invoke(cli, ["verify", "--cache", s3_cache, "--no-progress"])
    assert r.exit_code == 0 and "ds: 1 parts" in r.output, r.output
    r = CliRunner().invoke(cli, ["gc", "--cache", s3_cache, "--older-than", "0"])
    assert r.exit_code == 0 and "0 temporary part(s)" in r.output, r.output
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["verify", "--cache", "gs://bucket/cache"])
    assert isinstance(r.exception, StoreError) and "cannot serve gs:// caches" in str(r.exception)
    assert not (tmp_path / "gs:").exists()  # (the console script prints it as one line: test_store_cli)
