"""Extraction on a 2-worker Dask LocalCluster: same store as in-process, one model load per worker,
a killed worker, a SIGKILLed client and its rerun."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from clmer_features import testing as T
from clmer_features.distributed import DaskRunner, dask_client, extract_distributed
from clmer_features.runtime import clear_model_cache, worker_counters
from clmer_features.engine import extract
from clmer_features.store import open_store
from clmer_features.store.maintenance import verify

import _fault_runner
from _extract_helpers import media, tiny_models  # noqa: F401  (fixtures)

pytest.importorskip("distributed")
PARTITION = 3


def clip_rows(media: dict[str, Path]) -> list[dict]:
    """8 video clips (2 frames each), an audio-only clip and a broken one: 10 clips, 4 partitions."""
    rows = [{"clip_id": f"c{i}", "video": str(media["av"]), "start": 0.1 * i, "end": 0.1 * i + 2.5,
             "text": f"hello happy day {i}"} for i in range(8)]
    rows.append({"clip_id": "wav", "audio": str(media["wav"]), "text": "i am so sad today"})
    rows.append({"clip_id": "broken", "video": str(media["truncated"])})
    return rows


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> Path:
    """The workers' fault folder (see tests/_fault_runner.WorkerFaults): empty unless a test drops
    kill-/raise-/delay files in it."""
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def client(faults):
    import cloudpickle

    cloudpickle.register_pickle_by_value(_fault_runner)  # the workers cannot import tests/
    with dask_client(workers=2, log=lambda m: None) as c:
        c.register_plugin(_fault_runner.WorkerFaults(faults), name="clmer-test-faults")
        yield c


@pytest.fixture(scope="module")
def manifest(media, tmp_path_factory) -> Path:
    return T.write_manifest(tmp_path_factory.mktemp("man") / "clips.csv", clip_rows(media))


@pytest.fixture(scope="module")
def reference(manifest, tiny_models, tmp_path_factory):
    """The in-process run (default torch threads) that every Dask run must reproduce."""
    import torch

    cache = tmp_path_factory.mktemp("ref")
    s = extract(manifest, ["siglip", "bert"], cache, models_dir=tiny_models, device="cpu",
                partition_size=PARTITION, progress=False)
    return cache, s, torch.get_num_threads()


def parts_of(cache: Path, feature: str) -> list[Path]:
    store = open_store(cache, "clips")
    [spec] = store.specs(feature)
    return sorted(p for p in (spec.path / "parts").iterdir() if p.is_dir() and not p.name.startswith(".tmp-"))


def assert_same_store(a: Path, b: Path, features: list[str], same_parts: bool = True) -> None:
    """Same data in both stores; ``same_parts``: in parts of the same names (local disks)."""
    sa, sb = open_store(a, "clips"), open_store(b, "clips")
    for f in features:
        fa, fb = sa.feature(f), sb.feature(f)
        assert fa.spec.spec_id == fb.spec.spec_id
        assert fa.clip_ids == fb.clip_ids and len(fa.clip_ids) > 0
        if same_parts:
            assert [p.name for p in parts_of(a, f)] == [p.name for p in parts_of(b, f)]
        for cid in fa.clip_ids:
            va, vb = fa.get(cid), fb.get(cid)
            assert va.dtype == vb.dtype and np.array_equal(va, vb), f"{f}/{cid} differs"
            ta, tb = fa.times(cid), fb.times(cid)
            assert (ta is None and tb is None) or np.array_equal(ta, tb)
        assert np.array_equal(fa.pooled(fa.clip_ids, how="mean"), fb.pooled(fb.clip_ids, how="mean"))
    cols = ["clip_id", "feature", "spec_id", "stage", "error", "kind", "attempt"]
    la, lb = (s.ledger().filter(pl.col("feature").is_in(features)).select(cols).sort("feature", "clip_id")
              for s in (sa, sb))
    assert la.height > 0 and la.equals(lb)


def test_same_store_as_in_process_and_each_worker_loads_each_model_once(client, manifest, tiny_models,
                                                                         reference, tmp_path):
    import torch

    ref_cache, ref_summary, threads = reference
    client.run(clear_model_cache)
    runner = DaskRunner(client, log=lambda m: None)  # default: the client's torch threads, as in-process
    assert runner.torch_threads == threads == torch.get_num_threads()
    s = extract(manifest, ["siglip", "bert"], tmp_path / "cache", models_dir=tiny_models, device="cpu",
                partition_size=PARTITION, progress=False, runner=runner)
    assert_same_store(ref_cache, tmp_path / "cache", ["siglip", "bert"])
    for f in ("siglip", "bert"):
        a, b = ref_summary.features[f], s.features[f]
        assert (a.spec_id, a.done, a.failed, a.absent) == (b.spec_id, b.done, b.failed, b.absent)
    assert (s.features["siglip"].done, s.features["siglip"].absent, s.features["siglip"].failed) == (8, 1, 1)
    assert s.decoded == 10

    # 4 media partitions + 4 text partitions, one task each; every worker loaded each model it used once.
    assert runner.partitions_run == 8 and len(runner.results) == 8
    counters = client.run(worker_counters)
    assert sum(c["tasks"] for c in counters.values()) == 8
    busy = [c for c in counters.values() if c["tasks"]]
    assert max(c["tasks"] for c in busy) >= 4  # pigeonhole: some worker ran several partitions ...
    for c in busy:
        assert c["loads"] and set(c["loads"].values()) == {1}, c  # ... and still loaded each model once
    ran = {(r.worker, f) for r in runner.results for f in r.stats}
    assert sum(r.loads for r in runner.results) == len(ran) == sum(len(c["loads"]) for c in busy)

    # The workers did their numeric work with the in-process thread count (a local cluster's workers
    # start with 1: OMP_NUM_THREADS=1), which is why the numbers above are equal bit for bit.
    assert set(client.run(torch.get_num_threads).values()) == {threads}

    # A second run on the same cluster with nothing to do loads nothing and submits nothing.
    again = DaskRunner(client, log=lambda m: None)
    s2 = extract(manifest, ["siglip", "bert"], tmp_path / "cache", models_dir=tiny_models, device="cpu",
                 partition_size=PARTITION, progress=False, runner=again)
    assert again.partitions_run == 0 and s2.features["siglip"].skipped == 10 and s2.decoded == 0


def test_dask_workers_write_straight_to_s3(client, manifest, tiny_models, reference, s3_cache, s3_env):
    """Workers write their parts to a local S3 server (only counts come back); the store equals the
    in-process local-disk run, and verify is clean."""
    import os

    ref_cache, ref_summary, _ = reference
    client.run(lambda env: os.environ.update(env), dict(s3_env))  # the workers' credentials and endpoint
    runner = DaskRunner(client, log=lambda m: None)
    s = extract(manifest, ["siglip", "bert"], s3_cache, models_dir=tiny_models, device="cpu",
                partition_size=PARTITION, progress=False, runner=runner)
    assert runner.partitions_run == 8 and {r.worker for r in runner.results} <= set(client.scheduler_info()["workers"])
    assert_same_store(ref_cache, s3_cache, ["siglip", "bert"], same_parts=False)
    assert (s.features["siglip"].done, s.features["bert"].done) == (ref_summary.features["siglip"].done,
                                                                    ref_summary.features["bert"].done)
    assert verify(open_store(s3_cache, "clips")).ok


def test_a_killed_worker_costs_nothing(client, faults, manifest, tiny_models, reference, tmp_path):
    ref_cache, _, threads = reference
    # Partition 1's worker dies before writing; partition 2's dies after committing its part
    # (its rerun's part is discarded as a duplicate).
    for name in ("kill-before-1", "kill-after-2"):
        (faults / name).write_text("")
    runner = DaskRunner(client, torch_threads=threads, log=lambda m: None)
    s = extract(manifest, ["siglip"], tmp_path / "cache", models_dir=tiny_models, device="cpu",
                partition_size=PARTITION, progress=False, runner=runner)
    assert not list(faults.glob("kill-*")), "both faults fired"
    assert not runner.failures and len(runner.results) == 4
    assert (s.features["siglip"].done, s.features["siglip"].absent, s.features["siglip"].failed) == (8, 1, 1)
    parts = parts_of(tmp_path / "cache", "siglip")
    assert len(parts) == 4
    keys = pl.concat([pl.read_parquet(p / "index.parquet") for p in parts if (p / "index.parquet").exists()])
    keys = keys["clip_key"].to_list()
    assert len(keys) == len(set(keys)) == 8  # no clip duplicated across parts
    assert verify(open_store(tmp_path / "cache", "clips")).ok
    assert_same_store(ref_cache, tmp_path / "cache", ["siglip"])
    assert len(client.scheduler_info()["workers"]) == 2  # the nanny restarted the dead worker


def test_cli_scheduler_and_option_errors(client, manifest, tiny_models, reference):
    from clmer_features.cli import cli
    from clmer_features.errors import ClmerError

    ref_cache, _, _ = reference
    args = ["extract", str(manifest), "-f", "siglip,bert", "--cache", str(ref_cache), "--models-dir",
            str(tiny_models), "--device", "cpu", "--partition-size", str(PARTITION), "--no-progress"]
    r = CliRunner().invoke(cli, args + ["--scheduler", client.scheduler.address])
    assert r.exit_code == 0, r.output
    assert "Dask: 2 worker(s)" in r.output and "dashboard: http" in r.output
    assert "10 clips in manifest, 0 processed" in r.output  # nothing missing: nothing submitted
    r = CliRunner().invoke(cli, args + ["--scheduler", client.scheduler.address, "--workers", "2"])
    assert isinstance(r.exception, ClmerError) and "not both" in str(r.exception)
    with pytest.raises(ClmerError, match="no Dask worker offers the GPU resource"):
        extract_distributed(manifest, ["siglip"], ref_cache, client=client, device="cuda",
                            models_dir=tiny_models, progress=False, log=lambda m: None)


def test_client_killed_mid_run_then_rerun_computes_only_the_rest(client, manifest, tiny_models, tmp_path):
    """The client (scheduler in-process, --workers 2) dies (os._exit, like kill -9) once the results
    of 2 of 10 partitions reached it (tests/_fault_runner.py)."""
    cache = tmp_path / "cache"
    cmd = [sys.executable, str(Path(_fault_runner.__file__)), "dask-result", "2", "--", "extract", str(manifest),
           "-f", "siglip", "--cache", str(cache), "--models-dir", str(tiny_models), "--device", "cpu",
           "--partition-size", "1", "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out = proc.communicate(timeout=300)[0].decode()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        with contextlib.suppress(ProcessLookupError):  # its nannies/workers/decoders: same session
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == _fault_runner.KILLED, out[-2000:]
    time.sleep(0.5)  # the orphaned workers are gone: nothing writes any more
    [parts_dir] = list(cache.glob("clips/features/siglip/*/parts"))
    committed = len([p for p in parts_dir.iterdir() if p.is_dir() and not p.name.startswith(".tmp-")])
    assert 2 <= committed < 10
    assert not (parts_dir.parent / "COMPLETE.json").exists()

    runner = DaskRunner(client, log=lambda m: None)
    s = extract(manifest, ["siglip"], cache, models_dir=tiny_models, device="cpu", partition_size=1,
                progress=False, runner=runner)
    assert runner.partitions_run == 10 - committed
    assert s.features["siglip"].skipped == committed
    assert s.features["siglip"].done + s.features["siglip"].failed + s.features["siglip"].absent == 10 - committed
    store = open_store(cache, "clips")
    assert verify(store).ok
    assert store.feature("siglip").clip_ids == [f"c{i}" for i in range(8)]
    assert len(parts_of(cache, "siglip")) == 10


def test_local_cluster_pins_one_gpu_per_worker(client):
    """--workers N --device cuda: worker i sees GPU i (checked here without a GPU: the variable only)."""
    from clmer_features.distributed import _OneGpuPerWorker

    def visible() -> str | None:
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    before = client.run(visible)
    client.register_plugin(_OneGpuPerWorker(["3", "5"]), name="test-gpu-pin")
    try:
        seen = client.run(visible)
        names = {w: info["name"] for w, info in client.scheduler_info(n_workers=-1)["workers"].items()}
        assert {names[w]: v for w, v in seen.items()} == {0: "3", 1: "5"}
    finally:
        client.unregister_worker_plugin("test-gpu-pin")
        client.run(lambda old: os.environ.pop("CUDA_VISIBLE_DEVICES", None) if old is None else
                   os.environ.__setitem__("CUDA_VISIBLE_DEVICES", old), None)
    assert set(client.run(visible).values()) == set(before.values())


def test_a_partition_that_keeps_failing_leaves_a_consistent_store(client, faults, manifest, tiny_models,
                                                                   tmp_path):
    from clmer_features.errors import ClmerError

    cache = tmp_path / "cache"
    (faults / "raise-2").write_text("")
    try:
        with pytest.raises(ClmerError, match=r"1 partition\(s\) failed after 1 retries.*injected failure"):
            extract_distributed(manifest, ["siglip"], cache, client=client, device="cpu", retries=1,
                                models_dir=tiny_models, partition_size=PARTITION, progress=False,
                                log=lambda m: None)
    finally:
        (faults / "raise-2").unlink()
    store = open_store(cache, "clips")
    feat = store.feature("siglip")  # finalized with the 3 partitions that succeeded
    assert feat.clip_ids == ["c0", "c1", "c2", "c3", "c4", "c5"]  # partition 2 (c6, c7, wav) is missing
    rep = verify(store)  # sound, but 3 clips of the manifest are not extracted: a rerun completes it
    assert rep.state == "unfinished" and not rep.corrupt and len(parts_of(cache, "siglip")) == 3
    assert rep.unfinished == [f"siglip/{feat.spec.spec_id}: 3 clip(s) of the manifest snapshot are not extracted "
                              "yet (rerun extract)"]
    runner = DaskRunner(client, log=lambda m: None)
    extract(manifest, ["siglip"], cache, models_dir=tiny_models, device="cpu", partition_size=PARTITION,
            progress=False, runner=runner)
    assert runner.partitions_run == 1 and not runner.failures
    assert open_store(cache, "clips").feature("siglip").clip_ids == [f"c{i}" for i in range(8)]


def test_a_dask_client_and_a_local_run_on_one_cache_split_the_partitions(client, manifest, tiny_models, reference,
                                                                          tmp_path):
    """Leases: a Dask run and an in-process run started together on one cache compute each partition
    once between them (the Dask client leases two partitions per worker at a time)."""
    import threading

    ref_cache, _, _ = reference
    cache = tmp_path / "cache"
    kw = dict(models_dir=tiny_models, device="cpu", partition_size=1, progress=False)
    runner = DaskRunner(client, log=lambda m: None)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("local", extract(manifest, ["siglip"], cache, **kw)))
    t.start()
    dask = extract(manifest, ["siglip"], cache, runner=runner, **kw)
    t.join(120)
    local = out["local"].features["siglip"]
    d = dask.features["siglip"]

    def work(s):
        return s.done + s.failed + s.absent

    assert work(d) + work(local) == 10 and d.skipped + local.skipped == 10  # every partition once
    assert runner.partitions_run == work(d)
    assert verify(open_store(cache, "clips")).ok
    ref = open_store(ref_cache, "clips").feature("siglip")  # partition size differs from the reference:
    got = open_store(cache, "clips").feature("siglip")      # compare values, not part names
    # One clip a partition here, several in the reference: a clip's frames share a batch with other
    # clips' there, and a matmul's result can depend on the batch's row count in the last bit (seen on
    # an AMD EPYC: one value of one clip one float16 step apart). Equal within two float16 steps.
    assert got.clip_ids == ref.clip_ids
    for c in ref.clip_ids:
        np.testing.assert_allclose(got.get(c).astype(np.float32), ref.get(c).astype(np.float32),
                                   rtol=2**-9, atol=2**-20, err_msg=c)


def test_each_leased_batch_gets_task_keys_never_used_before_in_the_run(client, manifest, tiny_models, reference,
                                                                       tmp_path, monkeypatch):
    """The engine hands partitions to Dask in leased batches. A task key reused by a later batch is
    answered with the earlier batch's result while the scheduler still holds it: the partition is
    counted done but never runs (seen under load as one partition computed twice by two clients)."""
    ref_cache, _, _ = reference
    keys: list[str] = []
    submit = client.submit

    def recording(*a, **kw):
        keys.append(kw["key"])
        return submit(*a, **kw)

    monkeypatch.setattr(client, "submit", recording)
    runner = DaskRunner(client, log=lambda m: None)
    monkeypatch.setattr(DaskRunner, "window", property(lambda self: 1))  # one partition per batch
    cache = tmp_path / "cache"
    summary = extract(manifest, ["siglip"], cache, runner=runner, models_dir=tiny_models, device="cpu",
                      partition_size=3, progress=False)
    part_keys = [k for k in keys if not k.startswith("clmer-state-")]
    assert len(part_keys) == runner.partitions_run == 4 and len(set(part_keys)) == 4
    s = summary.features["siglip"]
    assert s.done + s.failed + s.absent == 10
    ref = open_store(ref_cache, "clips").feature("siglip")
    got = open_store(cache, "clips").feature("siglip")
    assert got.clip_ids == ref.clip_ids and all(np.array_equal(got.get(c), ref.get(c)) for c in ref.clip_ids)


def test_a_cache_made_with_a_former_default_is_finished_in_its_spec_on_dask(client, media, tmp_path):
    """asr's pack default changed (false -> true): a cache extracted unpacked for some clips is
    finished unpacked on the workers when pack is not given (they rebuild the extractor from the
    planner's config), the same transcripts as an unpacked run in-process."""
    from clmer_features.testing_audio import make_tiny_whisper

    whisper = make_tiny_whisper(tmp_path / "whisper")
    rows = clip_rows(media)[:9]  # 8 video clips and the wav
    asr = {"beam_size": 1, "max_new_tokens": 4, "language": "en"}
    man = T.write_manifest(tmp_path / "clips.csv", rows)
    half = T.write_manifest(tmp_path / "half.csv", rows[:4])

    def run(manifest, cache, params, runner=None):
        return extract(manifest, ["asr"], cache, dataset="clips", model_overrides={"asr": whisper}, device="cpu",
                       partition_size=PARTITION, progress=False, params={"asr": params}, runner=runner)

    refs = {pack: run(man, tmp_path / f"ref-{pack}", {**asr, "pack": pack}) for pack in (False, True)}
    segs = {pack: dict(open_store(tmp_path / f"ref-{pack}", "clips").feature("asr").records()
                        .select("clip_id", "segments").iter_rows()) for pack in refs}
    assert segs[False] != segs[True]  # packing changes this model's words: the check below can fail
    cache = tmp_path / "cache"
    run(half, cache, {**asr, "pack": False})
    runner = DaskRunner(client, log=lambda m: None)
    s = run(man, cache, asr, runner)  # pack not given
    assert runner.partitions_run == 2 and s.features["asr"].spec_id == refs[False].features["asr"].spec_id
    assert (s.features["asr"].skipped, s.features["asr"].done) == (4, 5) and "kept the spec" in s.notes[0]
    got = open_store(cache, "clips").feature("asr").records().select("clip_id", "segments").iter_rows()
    assert dict(got) == segs[False]
