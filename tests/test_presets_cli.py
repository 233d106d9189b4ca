"""Every preset extracts through the CLI from a hub-laid-out models dir of tiny random models of
the real classes, with the rows and times its family promises, and `--model NAME=DIR` swaps in any
compatible folder. (Each preset's extractor contract: tests/test_extract_conformance.py; on the demo
set locally and with --workers 2: tests/test_every_feature_on_demo.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from clmer_features import testing as T
from clmer_features import testing_zoo as Z
from clmer_features.cli import cli
from clmer_features.store import open_store

from _extract_helpers import media  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VIDEO = ["clip", "dinov2", "videomae"]
AUDIO = ["hubert", "wav2vec2", "wavlm", "whisper_encoder", "egemaps", "mfcc"]
TEXT = ["roberta", "macbert", "sbert"]
PRESETS = VIDEO + AUDIO + TEXT


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return Z.make_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def manifest(media, tmp_path_factory):
    rows = [{"clip_id": "av", "video": str(media["av"]), "text": "我今天很开心"},
            {"clip_id": "odd", "video": str(media["odd"]), "text": "这真是太难过了"},
            {"clip_id": "wav", "audio": str(media["wav"]), "text": "你为什么这么生气"},
            {"clip_id": "noaudio", "video": str(media["noaudio"]), "text": "天气很好"}]
    return T.write_manifest(tmp_path_factory.mktemp("man") / "zoo.csv", rows)


@pytest.fixture(scope="module")
def local_run(zoo, manifest, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    res = CliRunner().invoke(cli, ["extract", str(manifest), "-f", ",".join(PRESETS), "--cache", str(cache),
                                   "--models-dir", str(zoo), "--device", "cpu", "--no-progress",
                                   "--decode-workers", "0"])
    assert res.exit_code == 0, res.output
    return cache


@pytest.mark.parametrize("feature", PRESETS)
def test_each_preset_extracts_through_the_cli(local_run, feature):
    feat = open_store(local_run, "zoo").feature(feature)
    want = {"video": ["av", "odd", "noaudio"] if feature in VIDEO else [],
            "audio": ["av", "odd", "wav"], "text": ["av", "odd", "wav", "noaudio"]}
    kind = "video" if feature in VIDEO else "audio" if feature in AUDIO else "text"
    assert sorted(feat.clip_ids) == sorted(want[kind])
    rows = feat.get("av")
    assert rows.ndim == 2 and len(rows) and np.isfinite(rows.astype(np.float32)).all()
    times = feat.times("av")
    if kind == "text":
        assert times is None
    else:
        assert len(times) == len(rows) and np.all(np.diff(times) >= 0) and times[-1] < 5.1
    assert feat.pooled(["av"], how="model").shape[0] == 1
    # 5 s of video and audio: frames every 2 s, 64 / 16 segments, ~50 speech rows/s, 100 acoustic rows/s
    expect_rows = {"clip": 3, "dinov2": 64, "videomae": 8, "hubert": 250, "wav2vec2": 250, "wavlm": 250,
                   "whisper_encoder": 250, "egemaps": 500, "mfcc": 500, "roberta": 6, "macbert": 6}
    if feature in expect_rows:
        assert len(rows) == pytest.approx(expect_rows[feature], abs=5)


def test_weight_free_features_need_no_models_dir(manifest, tmp_path):
    res = CliRunner().invoke(cli, ["extract", str(manifest), "-f", "egemaps,mfcc", "--cache", str(tmp_path),
                                   "--no-progress", "--decode-workers", "0"])
    assert res.exit_code == 0, res.output
    assert open_store(tmp_path, "zoo").feature("mfcc").get("wav").shape[1] == 40


def test_model_option_points_a_preset_at_any_compatible_folder(zoo, manifest, local_run, tmp_path):
    b32 = Z.make_tiny_clip(tmp_path / "m", hub_id=Z.CLIP_B32_ID, seed=3)
    res = CliRunner().invoke(cli, ["extract", str(manifest), "-f", "clip", "--cache", str(tmp_path / "c"),
                                   "--models-dir", str(zoo), "--model", f"clip={b32}", "--device", "cpu",
                                   "--no-progress", "--decode-workers", "0"])
    assert res.exit_code == 0, res.output
    mine, default = open_store(tmp_path / "c", "zoo").feature("clip"), open_store(local_run, "zoo").feature("clip")
    assert mine.spec.weights_digest != default.spec.weights_digest  # other weights, another spec
    assert mine.spec.params == default.spec.params and mine.get("av").shape == default.get("av").shape
    assert mine.provenance["model"]["model_dir"] == str(b32.resolve())

