"""Every registered feature extracts on the demo set through the CLI, in-process and on a local
Dask cluster (--workers 2), with a tiny random model of its checkpoint's real class, and the two
stores hold the same specs, clips and numbers (within fp16 precision)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import clmer_demo as demo
from clmer_features import testing as T
from clmer_features.cli import cli
from clmer_features.extractors import available, get_extractor
from clmer_features.store import open_store

pytest.importorskip("distributed")
QUICK = ["asr.beam_size=1", "asr.max_new_tokens=4"]  # a random Whisper would generate 448 tokens


@pytest.mark.slow
def test_every_feature_on_the_demo_set_locally_and_on_two_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "find_meld", lambda meld=None: None)
    manifest = demo.make_demo_set(tmp_path / "demo", n_clips=8)
    features = available()
    zoo = tmp_path / "zoo"
    for name in features:
        if get_extractor(name).default_model:
            T.tiny_model(get_extractor(name).default_model, zoo)
    args = ["extract", str(manifest), "-f", ",".join(features), "--models-dir", str(zoo), "--device", "cpu",
            "--partition-size", "3", "--no-progress"] + [a for p in QUICK for a in ("--param", p)]
    r = CliRunner().invoke(cli, args + ["--cache", str(tmp_path / "local")])
    assert r.exit_code == 0, r.output
    cmd = [sys.executable, "-c", "from clmer_features.cli import main; main()", *args,
           "--cache", str(tmp_path / "dask"), "--workers", "2"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]

    local, dask = open_store(tmp_path / "local", "demo"), open_store(tmp_path / "dask", "demo")
    for name in features:
        a, b = local.feature(name), dask.feature(name)
        assert a.spec.spec_id == b.spec.spec_id, name
        assert sorted(a.clip_ids) == sorted(b.clip_ids), name
        if name == "faces":  # the demo's video is a test pattern: no face, every clip absent (ledger below)
            assert not a.clip_ids and set(a.failures()["kind"]) == {"absent"}
            continue
        assert a.clip_ids, name
        assert a.provenance["model"] == b.provenance["model"], name
        if get_extractor(name).family == "asr":
            assert a.records().sort("clip_id").equals(b.records().sort("clip_id")), name
            continue
        for cid in a.clip_ids:
            va, vb = a.get(cid).astype(np.float32), b.get(cid).astype(np.float32)
            assert va.shape == vb.shape, (name, cid)
            scale = max(float(np.abs(va).max(initial=0.0)), 1.0)
            np.testing.assert_allclose(va, vb, rtol=2e-3, atol=2e-3 * scale, err_msg=f"{name}/{cid}")
    led_a = local.ledger().select("feature", "clip_id", "kind").sort("feature", "clip_id")
    led_b = dask.ledger().select("feature", "clip_id", "kind").sort("feature", "clip_id")
    assert led_a.equals(led_b)
