"""`clmer-fusion ov-score`: any model's answers against a manifest's open-vocabulary gold sets."""
from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

from clmer_fusion.cli import cli


@pytest.fixture
def files(tmp_path):
    manifest = tmp_path / "ov.csv"
    pl.DataFrame({"clip_id": ["a", "b", "c", "d"], "video": ["gone/a.mp4"] * 4,
                  "openset": ["['happy', 'nervous']", "angry", "sad, disappointed", None]}).write_csv(manifest)
    preds = tmp_path / "preds.csv"
    pl.DataFrame({"clip_id": ["a", "b", "x"], "answer": ["joyful, anxious, surprised", "furious", "sad"]}).write_csv(preds)
    return manifest, preds


def test_scores_per_clip_and_overall_with_the_builtin_map(files, tmp_path):
    manifest, preds = files
    r = CliRunner().invoke(cli, ["ov-score", str(preds), str(manifest), "--out", str(tmp_path / "per.csv")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    p, rec = (2 / 3 + 1 + 0) / 3, (1 + 1 + 0) / 3                # c has a gold set and no prediction: 0
    f1 = 2 * p * rec / (p + rec)
    assert f"precision {p:.4f}  recall {rec:.4f}  F1 {f1:.4f}" in r.output and "over 3 clips" in r.output
    assert "1 clip(s) with a gold set have no prediction" in r.output and "not in the manifest, ignored: x" in r.output
    assert "happy: " in r.output and "joyful" in r.output.split("happy: ")[1].split("\n")[0]
    per = pl.read_csv(tmp_path / "per.csv")
    assert per["clip_id"].to_list() == ["a", "b", "c"]
    assert per.row(0, named=True)["predicted_groups"] == "happy; surprise; worried"
    assert per["precision"].to_list() == pytest.approx([2 / 3, 1.0, 0.0]) and per["f1"][0] == pytest.approx(0.8)


def test_a_synonym_file_replaces_the_map(files, tmp_path):
    manifest, preds = files
    (tmp_path / "syn.json").write_text(json.dumps({"groups": [["glad", "joyful", "happy"], ["mad", "furious", "angry"]]}))
    r = CliRunner().invoke(cli, ["ov-score", str(preds), str(manifest), "--synonyms", str(tmp_path / "syn.json")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    per = pl.read_csv(preds.with_suffix(".ov.csv"))
    # anxious/nervous are no longer one group: clip a hits happy only (P 1/3, R 1/2)
    assert per["precision"].to_list() == pytest.approx([1 / 3, 1.0, 0.0])
    assert per["recall"].to_list() == pytest.approx([0.5, 1.0, 0.0])
    assert f"synonym map: {tmp_path / 'syn.json'}" in r.output and "glad: happy, joyful" in r.output
    (tmp_path / "bad.json").write_text("[1, 2]")
    r = CliRunner().invoke(cli, ["ov-score", str(preds), str(manifest), "--synonyms", str(tmp_path / "bad.json")])
    assert r.exit_code != 0 and "expected" in str(r.exception)


def test_missing_columns_are_named(files, tmp_path):
    manifest, preds = files
    r = CliRunner().invoke(cli, ["ov-score", str(preds), str(manifest), "--pred-column", "guess"])
    assert r.exit_code != 0 and "no column 'guess'" in str(r.exception)
    r = CliRunner().invoke(cli, ["ov-score", str(preds), str(manifest), "--gold-column", "gold"])
    assert r.exit_code != 0 and "no gold column 'gold'" in str(r.exception)
