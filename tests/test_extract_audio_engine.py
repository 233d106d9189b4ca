"""The audio extractors inside the engine: emotion2vec rows and ASR transcripts land
in the store, clips without audio are 'absent', broken ones 'error', the rest finish."""
from __future__ import annotations

import json
import wave

import numpy as np
import pytest

from clmer_features import testing as T
from clmer_features.engine import extract
from clmer_features.extractors.asr import export_transcripts
from clmer_features.extractors.emotion2vec import Emotion2vecExtractor
from clmer_features.store import open_store
from clmer_features.testing_audio import make_tiny_emotion2vec, make_tiny_whisper

from _extract_helpers import media, media_rows  # noqa: F401  (fixtures)

E2V_ID = "emotion2vec/emotion2vec_base"


@pytest.fixture(scope="module")
def audio_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_models")
    make_tiny_emotion2vec(root / E2V_ID)
    make_tiny_whisper(root / "openai" / "whisper-large-v3-turbo")
    return root


def _read_wav(path) -> np.ndarray:
    with wave.open(str(path)) as fh:
        assert fh.getframerate() == 16000 and fh.getnchannels() == 1
        return np.frombuffer(fh.readframes(fh.getnframes()), "<i2").astype(np.float32) / 32768.0


def test_emotion2vec_and_asr_through_the_engine(audio_models, media, tmp_path):
    keep = {"av", "noaudio", "wav", "wav8k", "empty", "late", "short"}
    manifest = T.write_manifest(tmp_path / "clips.csv", [r for r in media_rows(media) if r["clip_id"] in keep])
    cache = tmp_path / "cache"
    s = extract(manifest, ["emotion2vec", "asr"], cache, models_dir=audio_models, device="cpu",
                batch_size=4, progress=False, params={"asr": {"beam_size": 1, "max_new_tokens": 4}})
    for name in ("emotion2vec", "asr"):
        st = s.features[name]
        assert (st.done, st.failed, st.absent) == (4, 2, 1), name
    store = open_store(cache, "clips")
    led = store.ledger()
    for name in ("emotion2vec", "asr"):
        rows = {r["clip_id"]: r for r in led.filter(led["feature"] == name).iter_rows(named=True)}
        assert {k: v["kind"] for k, v in rows.items()} == {
            "noaudio": "absent", "empty": "error", "late": "error"}

    e2v = store.feature("emotion2vec")
    with_audio = ["av", "wav", "wav8k", "short"]
    assert e2v.clip_ids == with_audio
    assert e2v.spec.params["window_seconds"] == 30.0 and e2v.spec.model_id == "clmer-testing/tiny-emotion2vec"
    rows = e2v.get("wav")  # 2.5 s at 16 kHz
    assert rows.shape == (124, 32)
    np.testing.assert_allclose(e2v.times("wav")[:3], [0.0, 0.02, 0.04], atol=1e-6)
    assert e2v.get("short").shape == (14, 32)  # 0.3 s clip
    assert e2v.get("wav8k").shape == (99, 32)  # 8 kHz stereo, resampled to 16 kHz mono
    # the stored rows are the extractor's rows on the same samples (stored as fp16)
    direct = Emotion2vecExtractor(audio_models / E2V_ID).embed(_read_wav(media["wav"]))
    np.testing.assert_allclose(rows.astype(np.float32), direct.values, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(e2v.pooled(["wav"], how="model")[0], direct.pooled, atol=2e-3, rtol=2e-3)

    asr = store.feature("asr")
    rec = asr.records()
    assert sorted(rec["clip_id"].to_list()) == sorted(with_audio)
    assert set(rec["backend"].to_list()) == {"transformers"}
    langs = dict(zip(rec["clip_id"], rec["language"]))
    srcs = dict(zip(rec["clip_id"], rec["language_source"]))
    assert langs["av"] == "en" and srcs["av"] == "manifest"  # the manifest says en
    assert srcs["wav"] == "detected"
    for seg_json in rec["segments"]:
        assert isinstance(json.loads(seg_json), list)
    assert export_transcripts(store, tmp_path / "out") == 4
    assert (tmp_path / "out" / "transcription_results.csv").is_file()

    # a rerun plans nothing for either feature
    s2 = extract(manifest, ["emotion2vec", "asr"], cache, models_dir=audio_models, device="cpu",
                 progress=False, params={"asr": {"beam_size": 1, "max_new_tokens": 4}})
    assert all(st.done == 0 for st in s2.features.values())


def test_audio_models_load_and_run_without_network(audio_models, monkeypatch):
    import socket

    from clmer_features.extractors.asr import AsrExtractor
    from clmer_features.testing_audio import audio_clip, faster_whisper_tiny_en, speak

    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    clip = audio_clip("x", speak("Please close the door when you leave the room."), language="en")
    extractors = [
        Emotion2vecExtractor(audio_models / E2V_ID),
        AsrExtractor(audio_models / "openai" / "whisper-large-v3-turbo", beam_size=1, max_new_tokens=4),
    ]
    if faster_whisper_tiny_en() is not None:
        extractors.append(AsrExtractor(faster_whisper_tiny_en(), beam_size=1))
    for ex in extractors:
        out = ex.extract([clip])[0]
        assert not isinstance(out, Exception), (ex.name, out)
    assert "door" in out.record["text"].lower() or faster_whisper_tiny_en() is None
