"""The engine: plan, decode once, ledger for broken clips, resume without model work, offline."""
from __future__ import annotations

import socket

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from clmer_features import engine, runtime
from clmer_features import testing as T
from clmer_features.engine import extract
from clmer_features.errors import ModelNotFoundError, ParameterError
from clmer_features.extractors import get_extractor
from clmer_features.extractors.base import Extractor
from clmer_features.store import open_store

from _extract_helpers import media, media_rows, tiny_models  # noqa: F401  (fixtures)


@pytest.fixture()
def manifest(media, tmp_path):
    return T.write_manifest(tmp_path / "clips.csv", media_rows(media))


def ledger_of(cache, feature):
    led = open_store(cache, "clips").ledger().filter(pl.col("feature") == feature)
    return {r["clip_id"]: r for r in led.iter_rows(named=True)}


def test_full_run_then_rerun_does_no_model_work(tiny_models, manifest, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    s = extract(manifest, ["bert", "siglip"], cache, models_dir=tiny_models, device="cpu", batch_size=3,
                progress=False)
    sg, bt = s.features["siglip"], s.features["bert"]
    # 6 clips with video decode; wav/wav8k have none; truncated/empty/late are broken
    assert (sg.done, sg.absent, sg.failed) == (6, 2, 3)
    assert (bt.done, bt.absent) == (4, 7)  # rows without text are filed under their media key, as absent
    assert s.decoded == 11 and sg.load_s > 0 and s.clips_per_s > 0
    assert "clips/s" in s.format()

    store = open_store(cache, "clips")
    feat = store.feature("siglip")
    assert feat.clip_ids == ["av", "av2", "noaudio", "odd", "unicode", "short"]
    assert feat.times("av").tolist() == [0.0, 2.0, 4.0]
    assert feat.times("noaudio").tolist() == [0.0, 2.0]
    assert feat.times("short").tolist() == [0.0]
    assert feat.get("av").shape == (3, 32)
    led = ledger_of(cache, "siglip")
    assert {k: v["kind"] for k, v in led.items()} == {
        "wav": "absent", "wav8k": "absent", "truncated": "error", "empty": "error", "late": "error"}
    assert "no video stream" in led["wav"]["message"]
    assert "empty file" in led["empty"]["message"]
    assert "past the end" in led["late"]["message"]
    assert "cannot read media" in led["truncated"]["message"]
    assert set(store.feature("bert").clip_ids) == {"av", "av2", "noaudio", "wav"}

    def boom(self):
        raise AssertionError("a rerun must not load a model")

    monkeypatch.setattr(Extractor, "load", boom)
    for cls in {type(e) for e in runtime.MODEL_CACHE.values()}:
        monkeypatch.setattr(cls, "load", boom)
    s2 = extract(manifest, ["siglip", "bert"], cache, models_dir=tiny_models, device="cpu", progress=False)
    assert s2.features["siglip"].skipped == 11 and s2.features["siglip"].done == 0
    assert s2.features["bert"].skipped == 11 and s2.decoded == 0 and s2.models_loaded == 0


def test_changed_media_is_redone_and_only_it(tiny_models, media, tmp_path):
    import shutil

    a = shutil.copy(media["av"], tmp_path / "a.mp4")
    b = shutil.copy(media["av2"], tmp_path / "b.mp4")
    man = T.write_manifest(tmp_path / "clips.csv", [{"clip_id": "a", "video": a}, {"clip_id": "b", "video": b}])
    extract(man, ["siglip"], tmp_path / "cache", models_dir=tiny_models, device="cpu", progress=False)
    T.make_video(tmp_path / "b.mp4", 4.0, freq=550.0)
    s = extract(man, ["siglip"], tmp_path / "cache", models_dir=tiny_models, device="cpu", progress=False)
    assert (s.features["siglip"].done, s.features["siglip"].skipped) == (1, 1)
    feat = open_store(tmp_path / "cache", "clips").feature("siglip")
    assert feat.get("b").shape[0] == 2 and feat.get("a").shape[0] == 3


def test_retry_failed_reprocesses_only_errors(tiny_models, manifest, tmp_path):
    cache = tmp_path / "cache"
    extract(manifest, ["siglip"], cache, models_dir=tiny_models, device="cpu", progress=False)
    s = extract(manifest, ["siglip"], cache, models_dir=tiny_models, device="cpu", progress=False,
                retry_failed=True)
    st = s.features["siglip"]
    assert st.skipped == 6 and st.failed == 3 and st.absent == 2 and st.done == 0
    assert len(ledger_of(cache, "siglip")) == 5


def test_a_model_error_on_one_clip_spares_the_batch(tiny_models, manifest, tmp_path, monkeypatch):
    from clmer_features.extractors.siglip import SiglipExtractor

    real = SiglipExtractor.extract

    def flaky(self, clips):
        if any(c.clip_id == "odd" for c in clips):
            if len(clips) > 1:
                raise RuntimeError("batch failed")
            raise RuntimeError("cannot embed this one")
        return real(self, clips)

    monkeypatch.setattr(SiglipExtractor, "extract", flaky)
    s = extract(manifest, ["siglip"], tmp_path / "cache", models_dir=tiny_models, device="cpu",
                batch_size=4, progress=False)
    assert s.features["siglip"].done == 5 and s.features["siglip"].failed == 4
    led = ledger_of(tmp_path / "cache", "siglip")
    assert led["odd"]["stage"] == "model" and led["odd"]["message"] == "cannot embed this one"


def test_no_socket_is_opened(tiny_models, manifest, tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    runtime.clear_model_cache()  # load the models again, under the guard
    assert runtime.MODEL_CACHE == {}
    s = extract(manifest, ["siglip", "bert"], tmp_path / "cache", models_dir=tiny_models, device="cpu",
                progress=False)
    assert s.features["siglip"].done == 6 and s.features["bert"].done == 4


def test_missing_model_is_one_clear_error(manifest, tmp_path):
    with pytest.raises(ModelNotFoundError, match="--models-dir"):
        extract(manifest, ["siglip"], tmp_path / "cache", models_dir=tmp_path / "nothing", progress=False)


def test_model_override_and_cli(tiny_models, manifest, tmp_path):
    from clmer_features.cli import cli

    res = CliRunner().invoke(cli, [
        "extract", str(manifest), "-f", "siglip", "--cache", str(tmp_path / "c"), "--device", "cpu",
        "--model", f"siglip={tiny_models / T.SIGLIP_ID}", "--no-progress", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert "siglip" in res.output and "clips/s" in res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("siglip")][0].split()
    assert line[2:6] == ["6", "3", "2", "0"]
    assert "3 clip-feature failure(s)" in res.output and "clmer-features status" in res.output
    res = CliRunner().invoke(cli, ["extract", str(manifest), "-f", "nosuch", "--cache", str(tmp_path / "c")])
    assert res.exit_code == 2 and "available:" in res.output


def test_part_names_are_deterministic(tiny_models, manifest, tmp_path):
    for d in ("c1", "c2"):
        extract(manifest, ["siglip"], tmp_path / d, models_dir=tiny_models, device="cpu", progress=False,
                partition_size=4)
    parts = [sorted(p.name for p in (tmp_path / d / "clips" / "features" / "siglip").glob("*/parts/p-*"))
             for d in ("c1", "c2")]
    assert parts[0] == parts[1] and len(parts[0]) == 3
    a = open_store(tmp_path / "c1", "clips").feature("siglip")
    b = open_store(tmp_path / "c2", "clips").feature("siglip")
    assert np.array_equal(a.get("av"), b.get("av"))


@pytest.fixture(scope="module")
def tiny_e2v(tmp_path_factory):
    pytest.importorskip("funasr")
    from clmer_features.testing_audio import make_tiny_emotion2vec

    return make_tiny_emotion2vec(tmp_path_factory.mktemp("e2v") / "tiny-emotion2vec")


def test_audio_and_video_features_share_one_decode(tiny_models, tiny_e2v, manifest, tmp_path):
    """siglip + emotion2vec in one run: each clip decoded once; missing streams are 'absent'."""
    cache = tmp_path / "cache"
    s = extract(manifest, ["siglip", "emotion2vec"], cache, models_dir=tiny_models,
                model_overrides={"emotion2vec": tiny_e2v}, device="cpu", batch_size=4, progress=False)
    assert s.decoded == 11  # not 22: one decode per clip for both features
    e2v = s.features["emotion2vec"]
    # audio: av, av2, wav, wav8k, odd, unicode, short decode; noaudio absent; 3 broken
    assert (e2v.done, e2v.absent, e2v.failed) == (7, 1, 3)
    led = ledger_of(cache, "emotion2vec")
    assert led["noaudio"]["kind"] == "absent" and led["noaudio"]["message"] == "no audio stream"
    assert led["late"]["kind"] == "error" and "past the end" in led["late"]["message"]
    feat = open_store(cache, "clips").feature("emotion2vec")
    # 50 Hz frame rows; the 8 kHz stereo wav (2 s) was resampled to 16 kHz mono first
    assert abs(feat.get("wav8k").shape[0] - 100) <= 2
    assert abs(feat.get("short").shape[0] - 15) <= 1  # the 0.3 s clip


@pytest.mark.gpu
def test_siglip_fp16_on_gpu_matches_cpu(tiny_models, media):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    from clmer_features.extractors import get_extractor
    from clmer_features.extractors.base import DecodedClip, FrameRequest
    from clmer_features.media import DecodeJob, decode_clip

    req = FrameRequest.interval(2.0)
    r = decode_clip(DecodeJob("av", str(media["av"]), None, None, (req,), False))
    clip = DecodedClip("av", {"media": "av"}, {}, frames=r.frames)
    cls = get_extractor("siglip")
    cpu = cls(tiny_models / T.SIGLIP_ID, device="cpu").extract([clip])[0].values
    gpu = cls(tiny_models / T.SIGLIP_ID, device="cuda").extract([clip])[0].values
    np.testing.assert_allclose(gpu, cpu, atol=2e-2, rtol=2e-2)


def test_params_and_device_from_the_cli(tiny_models, media, tmp_path):
    from clmer_features.cli import cli

    man = T.write_manifest(tmp_path / "one.csv", [{"clip_id": "av", "video": str(media["av"])}])
    base = ["extract", str(man), "-f", "siglip", "--cache", str(tmp_path / "c"), "--models-dir", str(tiny_models),
            "--no-progress", "--device", "cpu"]
    res = CliRunner().invoke(cli, [*base, "--param", "siglip.frame_interval=1.0"])
    assert res.exit_code == 0, res.output
    store = open_store(tmp_path / "c", "one")
    (spec,) = [s.spec for s in store.specs("siglip")]
    assert spec.params["frame_interval"] == 1.0
    assert store.feature("siglip").times("av").tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ParameterError, match="siglip: unknown parameter 'frame_rate'"):
        engine.extract(man, ["siglip"], tmp_path / "c", models_dir=tiny_models, device="cpu",
                       params={"siglip": {"frame_rate": 3}}, progress=False)
    with pytest.raises(Exception, match="not among the features"):
        engine.extract(man, ["siglip"], tmp_path / "c", models_dir=tiny_models, device="cpu",
                       params={"bert": {"pooled": "cls"}}, progress=False)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="no CUDA GPU"):
            engine.extract(man, ["siglip"], tmp_path / "c", models_dir=tiny_models, device="cuda", progress=False)


def test_file_gone_after_the_manifest_was_read(tiny_models, media, tmp_path):
    import shutil

    from clmer_features.manifest import read_manifest

    gone = shutil.copy(media["av2"], tmp_path / "gone.mp4")
    man = T.write_manifest(tmp_path / "clips.csv", [{"clip_id": "ok", "video": str(media["av"])},
                                                   {"clip_id": "gone", "video": gone}])
    m = read_manifest(man)  # fingerprints taken while the file existed
    (tmp_path / "gone.mp4").unlink()
    s = extract(m, ["siglip"], tmp_path / "cache", models_dir=tiny_models, device="cpu", progress=False,
                decode_workers=0)
    assert (s.features["siglip"].done, s.features["siglip"].failed) == (1, 1)
    led = ledger_of(tmp_path / "cache", "siglip")
    assert led["gone"]["stage"] == "decode" and "file not found" in led["gone"]["message"]


def test_missing_file_is_a_ledger_entry_and_is_extracted_once_it_appears(tiny_models, media, tmp_path):
    import shutil

    late = tmp_path / "late.mp4"
    man = T.write_manifest(tmp_path / "clips.csv", [{"clip_id": "ok", "video": str(media["av"])},
                                                   {"clip_id": "ok2", "video": str(media["av2"])},
                                                   {"clip_id": "late", "video": str(late)}])
    cache = tmp_path / "cache"
    s = extract(man, ["siglip"], cache, models_dir=tiny_models, device="cpu", progress=False, decode_workers=0)
    assert (s.features["siglip"].done, s.features["siglip"].failed, s.missing_media) == (2, 1, 1)
    assert "1 clip(s) have no media file (ledger kind 'missing'" in s.format()
    led = ledger_of(cache, "siglip")
    assert (led["late"]["kind"], led["late"]["error"]) == ("missing", "MissingFile")
    assert led["late"]["message"] == f"file not found: {late}"
    from clmer_features.store.maintenance import status as store_status

    (st,) = store_status(open_store(cache, "clips"))
    assert (st.done, st.failed, st.missing, st.absent) == (2, 1, 0, 0)  # status agrees with extract
    again = extract(man, ["siglip"], cache, models_dir=tiny_models, device="cpu", progress=False, decode_workers=0)
    assert (again.features["siglip"].skipped, again.features["siglip"].done) == (3, 0)
    shutil.copy(media["av"], late)
    s3 = extract(man, ["siglip"], cache, models_dir=tiny_models, device="cpu", progress=False, decode_workers=0)
    assert (s3.features["siglip"].done, s3.features["siglip"].skipped, s3.missing_media) == (1, 2, 0)
    reader = open_store(cache, "clips").feature("siglip")
    assert reader.failures().height == 0 and reader.get("late").shape[0] > 0


def test_models_loaded_counts_loads_not_runs(tiny_models, manifest, tmp_path):
    """A second run in the same process (new work, models already cached) loads nothing."""
    extract(manifest, ["siglip"], tmp_path / "a", models_dir=tiny_models, device="cpu", progress=False)
    s2 = extract(manifest, ["siglip"], tmp_path / "b", models_dir=tiny_models, device="cpu", progress=False)
    assert s2.features["siglip"].done == 6
    assert s2.models_loaded == 0 and s2.features["siglip"].load_s == 0.0


def test_phases_follow_requires():
    assert engine.phases(["bert", "siglip", "asr", "siglip"]) == [["siglip", "asr"], ["bert"]]
    assert engine.phases(["bert", "emotion2vec"]) == [["bert", "emotion2vec"]]  # asr not asked: read from the store


def test_phases_refuse_a_cycle(monkeypatch):
    from clmer_features.errors import ClmerError
    from clmer_features.extractors import base
    from clmer_features.extractors.asr import AsrExtractor

    class Circular(AsrExtractor):
        requires = ("bert",)

    get_extractor("asr")
    monkeypatch.setitem(base._REGISTRY, "asr", Circular)
    with pytest.raises(ClmerError, match="asr, bert require each other"):
        engine.phases(["asr", "bert"])


def test_one_model_cache_key_rule(tiny_models, tmp_path):
    """The model cache (local engine and Dask workers alike) is keyed by feature, resolved folder,
    device and the config's JSON: equal settings share one extractor, other settings do not."""
    import os

    from clmer_features.extractors.siglip import SiglipConfig

    runtime.clear_model_cache()
    folder = tiny_models / T.SIGLIP_ID
    link = tmp_path / "same-folder"
    os.symlink(folder, link)
    a = runtime.cached_extractor("siglip", folder, "cpu", SiglipConfig(frame_interval=1.0))
    assert runtime.cached_extractor("siglip", link, "cpu", SiglipConfig(frame_interval=1)) is a
    assert runtime.cached_extractor("siglip", folder, "cpu", SiglipConfig(frame_interval=2.0)) is not a
    assert runtime.cached_extractor("siglip", folder, "cuda", SiglipConfig(frame_interval=1.0)) is not a
    key = runtime.model_key(a)
    assert key == runtime.ModelKey("siglip", str(folder.resolve()), "cpu", SiglipConfig(frame_interval=1.0).to_json())
    runtime.MODEL_CACHE.clear()  # a worker that lacks it rebuilds it from the key alone
    b = runtime.extractor_for(key)
    assert b is not a and runtime.model_key(b) == key and b.config == a.config
    runtime.clear_model_cache()
