"""Partition leases: two extracts on one cache split the work; a dead owner's partitions are taken
over; leases never decide what is in the store."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from clmer_features import testing as T
from clmer_features.engine import extract
from clmer_features.store import open_store
from clmer_features.store.lease import Leases
from clmer_features.store.maintenance import gc, verify

import _fault_runner
from _extract_helpers import tiny_models  # noqa: F401  (fixture)

N, PART = 16, 4  # 4 partitions


def test_a_lease_is_exclusive_until_released(tmp_path):
    with Leases(tmp_path) as a, Leases(tmp_path) as b:
        assert a.acquire("x") and a.acquire("x")  # ours already
        assert not b.acquire("x")
        a.release("x")
        assert b.acquire("x") and not a.acquire("x")
    assert not list((tmp_path / "leases").glob("*.json"))  # leaving the context releases everything


def test_heartbeat_keeps_a_lease_and_a_stale_or_dead_owner_loses_it(tmp_path):
    with Leases(tmp_path, ttl_s=0.6) as a, Leases(tmp_path, ttl_s=0.6) as b:
        assert a.acquire("beat")
        time.sleep(1.5)  # well past the TTL: a's heartbeat kept it fresh
        assert not b.acquire("beat")
        # another host's lease whose heartbeat stopped expires after the TTL ...
        path = b.dir / "far.json"
        path.write_text(json.dumps({"token": "t", "host": "elsewhere", "pid": 1}))
        assert not b.acquire("far")
        old = time.time() - 5
        os.utime(path, (old, old))
        assert b.acquire("far") and b.taken_over == ["far"]
        # ... and one of a process of this host that no longer exists, at once
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        (b.dir / "dead.json").write_text(json.dumps({"token": "u", "host": a.me["host"], "pid": dead.pid}))
        assert a.acquire("dead")
        # gc removes expired leases, not live ones
        (b.dir / "gone.json").write_text(json.dumps({"token": "v", "host": a.me["host"], "pid": dead.pid}))
        rep = gc(open_store(tmp_path.parent, tmp_path.name))
        assert [p.name for p in rep.removed_leases] == ["gone.json"]


def manifest(tmp_path: Path) -> Path:
    return T.write_manifest(tmp_path / "clips.csv", [{"clip_id": f"t{i:02d}", "text": f"words {i} today"}
                                                     for i in range(N)])


def holder(tmp_path: Path, m: Path, cache: Path, models: Path, release: Path) -> subprocess.Popen:
    """A CLI extract whose first partition waits, holding its lease, until ``release`` exists."""
    cmd = [sys.executable, _fault_runner.__file__, "hold", str(release), "--", "extract", str(m), "-f", "bert",
           "--cache", str(cache), "--models-dir", str(models), "--device", "cpu", "--partition-size", str(PART),
           "--no-progress"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    while line and line.strip() != "holding":
        line = p.stdout.readline()
    assert line.strip() == "holding", p.communicate()[0][-2000:]
    return p


def counts(output: str) -> tuple[int, int]:
    """done, skipped from the bert line of an extract summary."""
    line = next(l for l in output.splitlines() if l.startswith("bert"))
    f = line.split()
    return int(f[2]), int(f[5])


def bert_values(cache: Path) -> dict[str, np.ndarray]:
    r = open_store(cache, "clips").feature("bert")
    return {c: r.get(c) for c in r.clip_ids}


def test_two_extracts_split_the_partitions_and_write_one_store(tiny_models, tmp_path):
    m, cache, release = manifest(tmp_path), tmp_path / "cache", tmp_path / "release"
    ref = extract(m, ["bert"], tmp_path / "ref", models_dir=tiny_models, device="cpu", partition_size=PART,
                  progress=False)
    a = holder(tmp_path, m, cache, tiny_models, release)
    try:
        def let_a_go_when_b_did_the_rest() -> None:
            deadline = time.time() + 120
            while time.time() < deadline:
                parts = list(cache.glob("clips/features/bert/*/parts/p-*"))
                if len(parts) >= 3:
                    break
                time.sleep(0.05)
            release.touch()

        threading.Thread(target=let_a_go_when_b_did_the_rest, daemon=True).start()
        b = extract(m, ["bert"], cache, models_dir=tiny_models, device="cpu", partition_size=PART, progress=False)
        out = a.communicate(timeout=120)[0]
    finally:
        release.touch()
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0, out[-2000:]
    # A did the partition it held, B the three others: nothing computed twice, nothing left out
    assert counts(out) == (4, 12)
    assert (b.features["bert"].done, b.features["bert"].skipped) == (12, 4)
    assert ref.features["bert"].done == 16
    vals, want = bert_values(cache), bert_values(tmp_path / "ref")
    assert sorted(vals) == sorted(want) and all(np.array_equal(vals[k], want[k]) for k in want)
    assert verify(open_store(cache, "clips")).ok
    assert not list((cache / "clips" / "leases").glob("*.json"))


def test_a_killed_owners_partition_is_taken_over(tiny_models, tmp_path):
    m, cache, release = manifest(tmp_path), tmp_path / "cache", tmp_path / "release"
    a = holder(tmp_path, m, cache, tiny_models, release)
    [lease] = list((cache / "clips" / "leases").glob("partition-*.json"))
    os.kill(a.pid, signal.SIGKILL)
    a.wait(30)
    assert lease.exists()  # a crash leaves its lease behind ...
    t0 = time.perf_counter()
    b = extract(m, ["bert"], cache, models_dir=tiny_models, device="cpu", partition_size=PART, progress=False)
    assert time.perf_counter() - t0 < 30  # ... which is not waited out: its owner is a dead process here
    assert (b.features["bert"].done, b.features["bert"].skipped) == (16, 0)
    assert len(open_store(cache, "clips").feature("bert")) == N and verify(open_store(cache, "clips")).ok
    assert not lease.exists()


def test_leases_lost_do_not_matter(tiny_models, tmp_path):
    """Leases only save work: a run whose leases are wiped mid-way still writes one correct store."""
    m, cache = manifest(tmp_path), tmp_path / "cache"
    from clmer_features.store import lease as lease_mod

    real = lease_mod.Leases.acquire

    def forgetful(self, name):  # every lease file vanishes right after it is taken
        ok = real(self, name)
        for p in self.dir.glob("*.json"):
            p.unlink()
        return ok

    lease_mod.Leases.acquire = forgetful
    try:
        s = extract(m, ["bert"], cache, models_dir=tiny_models, device="cpu", partition_size=PART, progress=False)
    finally:
        lease_mod.Leases.acquire = real
    assert s.features["bert"].done == N
    assert len(open_store(cache, "clips").feature("bert")) == N and verify(open_store(cache, "clips")).ok
