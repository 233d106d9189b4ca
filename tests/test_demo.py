"""The demo set (fast) and the whole demo (slow: real ASR and MiniLM)."""
from __future__ import annotations

import polars as pl
import pytest

import clmer_demo as demo
from clmer_features.manifest import read_manifest


def test_demo_set_fallback_sentences(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "find_meld", lambda meld=None: None)
    path = demo.make_demo_set(tmp_path / "d", n_clips=8)
    m = read_manifest(path)
    df = m.df
    assert df.height == 8
    assert df.filter(pl.col("language") == "en").height == 4
    zh = df.filter(pl.col("language") == "zh")
    assert zh.height == 4 and zh["text"].null_count() == 0  # Mandarin gets its text
    assert df.filter(pl.col("language") == "en")["text"].null_count() == 4  # English text comes from ASR
    assert set(df["label"].to_list()) <= {"positive", "negative", "neutral"}
    assert set(df["split"].to_list()) <= {"train", "val", "test"} and "train" in set(df["split"].to_list())
    # a second call reuses the clips (same fingerprints, nothing to re-extract)
    before = [p.stat().st_mtime_ns for p in sorted((tmp_path / "d" / "media").iterdir())]
    demo.make_demo_set(tmp_path / "d", n_clips=8)
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "d" / "media").iterdir())] == before


def test_demo_set_from_meld(tmp_path):
    folder = demo.find_meld()
    if folder is None:
        pytest.skip("../shared/data/meld is not here")
    rows = demo.meld_sentences(folder, 6)
    assert [r["label"] for r in rows] == ["positive", "negative", "neutral"] * 2
    assert all(r["reference"].isascii() and 5 <= len(r["reference"].split()) <= 14 for r in rows)


def test_meld_reader_tolerates_cp1252(tmp_path):
    text = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n"
    text += '1,"Oh my God, he\u2019s lost it, he really is.",Phoebe,sadness,negative,0,0\n'
    (tmp_path / "train_sent_emo.csv").write_bytes(text.encode("cp1252"))
    rows = demo.meld_sentences(tmp_path, 2)
    assert [r["reference"] for r in rows] == ["Oh my God, he's lost it, he really is."]
    assert rows[0]["label"] == "negative" and rows[0]["emotion"] == "sadness"


@pytest.mark.slow
def test_whole_demo(tmp_path):
    report = demo.run_demo(tmp_path / "run", n_clips=12, device="cpu", echo=lambda s: None)
    assert "siglip+emotion2vec+bert" in report and "word error rate" in report
