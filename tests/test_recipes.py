"""Dataset recipes: official label layouts (with their quirks) -> manifests that pass the check."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from clmer_features.cli import cli
from clmer_features.manifest import read_manifest
from clmer_features.recipes import RecipeError, available, build_manifest
from tests._recipes_helpers import MAKERS, make_chsims2, make_dfew, make_iemocap, make_meld, make_mer2025, make_mosei

MELD_REAL = Path("/work/shared/data/meld")


@pytest.mark.parametrize("dataset", sorted(MAKERS))
def test_recipe_reports_every_quirk_and_passes_check(tmp_path: Path, dataset: str) -> None:
    root = tmp_path / dataset
    expected = MAKERS[dataset](root)
    out = tmp_path / "manifests" / f"{dataset}.csv"
    result = build_manifest(dataset, root, out)
    rep = result.report
    assert rep.rows_written == expected["written"] == len(result.rows)
    assert rep.dropped == expected["dropped"]
    assert rep.counts() == expected["counts"]
    # every problem names its file, and row problems their row
    for p in rep.problems:
        assert p.file and p.message
        if p.kind in ("missing_media", "unparseable_row", "duplicate_id", "id_mismatch", "fold_conflict"):
            assert p.row is not None and p.row >= 1
            assert f"(line {p.row + 1})" in p.line() if p.file.endswith(".csv") else f"line {p.row}" in p.line()
    assert (tmp_path / "manifests" / f"{dataset}.csv.report.txt").read_text().count("\n") >= len(rep.problems)
    m = read_manifest(out)  # the lead's manifest check: raises on any problem
    assert len(m) == expected["written"]
    assert m.df["clip_id"].n_unique() == len(m)
    assert m.df["label"].null_count() == 0 or dataset == "mer2025"


def test_chsims2_columns_and_values(tmp_path: Path) -> None:
    make_chsims2(tmp_path / "sims", n=6)
    out = tmp_path / "sims.parquet"
    build_manifest("chsims2", tmp_path / "sims", out)
    df = read_manifest(out).df
    row = df.filter(pl.col("clip_id") == "aqgy3_0000_00002").row(0, named=True)
    assert row["label"] == "positive" and row["label_value"] == pytest.approx(0.8)
    assert row["label_T"] == pytest.approx(0.8) and row["label_A"] == pytest.approx(0.4)
    assert row["language"] == "zh" and row["split"] == "train" and row["text"] == "句子2"
    assert row["video"].endswith("Raw/aqgy3_0000/00002.mp4")
    # the id written "7" in the label file is matched to 00007.mp4 and keeps its label-file id
    mismatch = df.filter(pl.col("clip_id") == "aqgy3_0100_7").row(0, named=True)
    assert mismatch["video"].endswith("aqgy3_0100/00007.mp4")
    assert set(df["split"].to_list()) == {"train", "valid", "test"}


def test_missing_media_kept_with_option(tmp_path: Path) -> None:
    make_chsims2(tmp_path / "sims", n=6)
    res = build_manifest("chsims2", tmp_path / "sims", tmp_path / "m.csv", keep_missing=True)
    assert res.report.rows_written == 8  # 6 + the loose match + the kept missing one
    kept = [p for p in res.report.problems if p.kind == "missing_media"]
    assert len(kept) == 1 and not kept[0].dropped
    df = read_manifest(tmp_path / "m.csv").df  # still passes: the media column is empty, text present
    row = df.filter(pl.col("clip_id") == "aqgy3_0101_00000").row(0, named=True)
    assert row["video"] is None and row["missing_media"].endswith("aqgy3_0101/00000.mp4")


def test_meld_cp1252_and_splits(tmp_path: Path) -> None:
    make_meld(tmp_path / "meld", n=15)
    res = build_manifest("meld", tmp_path / "meld", tmp_path / "meld.csv")
    assert any("Windows-1252" in n for n in res.report.notes)
    df = read_manifest(tmp_path / "meld.csv").df
    row = df.filter(pl.col("clip_id") == "train_dia0_utt0").row(0, named=True)
    assert row["text"] == "I don\u2019t know, line 0"  # 0x92 decoded as a right quote
    assert row["speaker"] == "Ross" and row["sentiment"] == "positive" and row["label"] == "joy"
    assert row["start"] is None and row["episode_start"] == "00:20:57,256"
    assert df.filter(pl.col("clip_id") == "dev_dia1_utt0")["split"].to_list() == ["valid"]
    missing = [p for p in res.report.problems if p.kind == "missing_media"]
    assert missing[0].file == "dev_sent_emo.csv" and missing[0].row == 4 and "dia110_utt7.mp4" in missing[0].message


@pytest.mark.skipif(not MELD_REAL.is_dir(), reason="real MELD CSVs not on this machine")
def test_meld_real_csvs_text_only(tmp_path: Path) -> None:
    res = build_manifest("meld", MELD_REAL, tmp_path / "meld.parquet", options={"text_only": "true"})
    assert res.report.rows_written == 9989 + 1109 + 2610 and not res.report.problems
    m = read_manifest(tmp_path / "meld.parquet")
    assert m.summary()["splits"] == {"train": 9989, "test": 2610, "valid": 1109}
    assert m.summary()["labels"]["neutral"] == 6436


def test_meld_without_videos_reports_each_row(tmp_path: Path) -> None:
    make_meld(tmp_path / "meld", n=10)
    import shutil

    shutil.rmtree(tmp_path / "meld" / "MELD.Raw")
    with pytest.raises(RecipeError, match="no usable rows"):
        build_manifest("meld", tmp_path / "meld", tmp_path / "m.csv")
    report = (tmp_path / "m.csv.report.txt").read_text()
    assert report.count("media file not found") == 11 and "video folder train_splits/ not found" in report


def test_iemocap_sessions_labels_and_options(tmp_path: Path) -> None:
    exp = make_iemocap(tmp_path / "iemocap")
    res = build_manifest("iemocap", tmp_path / "iemocap", tmp_path / "i4.csv")
    assert any(f"{exp['excluded']} utterances" in n for n in res.report.notes)
    df = read_manifest(tmp_path / "i4.csv").df
    assert sorted(df["label"].unique().to_list()) == ["angry", "happy", "neutral", "sad"]
    row = df.filter(pl.col("clip_id") == "Ses01F_impro01_M001").row(0, named=True)
    assert row["label"] == "happy" and row["speaker"] == "Ses01M" and row["fold"] == "1"
    assert row["session"] == "Session1" and float(row["valence"]) == 2.5 and float(row["activation"]) == 3.0
    assert row["text"] == "utterance 1 of session 1." and row["audio"].endswith("Ses01F_impro01_M001.wav")
    exc = df.filter(pl.col("clip_id") == "Ses01F_impro01_F002").row(0, named=True)
    assert exc["label"] == "happy" and exc["emotion_code"] == "exc"  # excited merged into happy
    assert df.group_by("fold").len().sort("fold")["len"].to_list() == [6, 7, 6, 6, 6]
    bad = [p for p in res.report.problems if p.kind == "unparseable_row"][0]
    assert bad.file == "Session2/dialog/EmoEvaluation/Ses02F_impro01.txt" and bad.row is not None

    for s in range(1, 6):
        (tmp_path / "iemocap" / f"Session{s}" / "dialog" / "avi" / "DivX").mkdir(parents=True)
        (tmp_path / "iemocap" / f"Session{s}" / "dialog" / "avi" / "DivX" / f"Ses0{s}F_impro01.avi").write_bytes(b"RIFFavi")
    build_manifest("iemocap", tmp_path / "iemocap", tmp_path / "iall.csv", options={"classes": "all", "media": "avi"})
    df = read_manifest(tmp_path / "iall.csv").df
    assert df.height == exp["written"] + exp["excluded"] + 1  # + the turn whose wav is missing
    assert df["label"].null_count() == 5  # xxx: no agreement
    row = df.filter(pl.col("clip_id") == "Ses01F_impro01_F000").row(0, named=True)
    assert row["video"].endswith("Ses01F_impro01.avi") and row["start"] == 1.5 and row["end"] == 3.75


def test_dfew_folds(tmp_path: Path) -> None:
    make_dfew(tmp_path / "dfew", n=40)
    res = build_manifest("dfew", tmp_path / "dfew", tmp_path / "dfew.csv")
    df = read_manifest(tmp_path / "dfew.csv").df
    assert df.group_by("fold").len().sort("fold")["len"].to_list() == [8] * 5
    row = df.filter(pl.col("clip_id") == "7").row(0, named=True)
    assert row["fold"] == "2" and row["label"] == "neutral" and row["video"].endswith("00007.mp4")
    assert row["label_id"] == "3"  # the dataset's own id as written (not 3.0)
    conflict = [p for p in res.report.problems if p.kind == "fold_conflict"][0]
    assert conflict.file == "test(single-labeled)/set_2.csv" and "fold 1" in conflict.message


def test_dfew_train_test_overlap_is_reported(tmp_path: Path) -> None:
    make_dfew(tmp_path / "dfew", n=10)
    train = tmp_path / "dfew" / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1.csv"
    train.write_text(train.read_text() + "1,1\n")  # clip 1 is in test set 1 too
    res = build_manifest("dfew", tmp_path / "dfew", tmp_path / "d.csv")
    assert res.report.counts()["fold_conflict"] == 2
    assert "1" not in read_manifest(tmp_path / "d.csv").clip_ids


def test_mer2025_tracks_and_languages(tmp_path: Path) -> None:
    make_mer2025(tmp_path / "mer", n=10)
    build_manifest("mer2025", tmp_path / "mer", tmp_path / "zh.csv")
    df = read_manifest(tmp_path / "zh.csv").df
    row = df.filter(pl.col("clip_id") == "sample_00000002").row(0, named=True)
    assert row["text"] == "中文字幕2" and row["language"] == "zh" and row["text_en"] == "English subtitle 2"
    assert row["label"] == "angry" and row["label_value"] == 2.5 and row["audio"].endswith("sample_00000002.wav")
    assert df.filter(pl.col("split") == "test").height == 2
    build_manifest("mer2025", tmp_path / "mer", tmp_path / "en.csv", options={"text": "en"})
    df = read_manifest(tmp_path / "en.csv").df
    assert df.filter(pl.col("clip_id") == "sample_00000002")["text"].item() == "English subtitle 2"
    from tests._recipes_helpers import write_csv

    write_csv(tmp_path / "mer" / "track2_train_ovmerd.csv", ["name", "openset"],
              [["sample_00000001", "['happy', 'relaxed']"], ["sample_00000003", ""]])
    res = build_manifest("mer2025", tmp_path / "mer", tmp_path / "t2.csv", options={"track": "2"})
    df = read_manifest(tmp_path / "t2.csv").df
    assert df["clip_id"].to_list() == ["sample_00000001"] and df["openset"].item() == "['happy', 'relaxed']"
    assert res.report.counts() == {"unparseable_row": 1}


def test_unknown_dataset_option_and_missing_label_file(tmp_path: Path) -> None:
    assert available() == ["chsims2", "mosei", "meld", "iemocap", "dfew", "mer2025"]
    with pytest.raises(RecipeError, match="unknown option"):
        build_manifest("dfew", tmp_path, tmp_path / "x.csv", options={"classes": "4"})
    with pytest.raises(RecipeError, match="label.csv"):
        build_manifest("mosei", tmp_path, tmp_path / "x.csv")
    make_mosei(tmp_path / "mosei", n=5)
    with pytest.raises(RecipeError, match="extension"):
        build_manifest("mosei", tmp_path / "mosei", tmp_path / "x.txt")


def test_cli_manifest_from(tmp_path: Path) -> None:
    make_mer2025(tmp_path / "mer", n=10)
    out = tmp_path / "mer.csv"
    r = CliRunner().invoke(cli, ["manifest", "from", "mer2025", str(tmp_path / "mer"), "-o", str(out), "-O", "text=en"])
    assert r.exit_code == 0, r.output
    assert "mer2025: 11 clips written" in r.output and "missing_media: 1" in r.output
    r = CliRunner().invoke(cli, ["manifest", "check", str(out)])
    assert r.exit_code == 0 and "clips      11" in r.output
    r = CliRunner().invoke(cli, ["manifest", "from", "mer2025", str(tmp_path / "mer"), "-o", str(out), "-O", "track"])
    assert r.exit_code != 0 and "KEY=VALUE" in r.output


def test_relative_paths_and_strict(tmp_path: Path) -> None:
    make_mosei(tmp_path / "data" / "mosei", n=10)
    out = tmp_path / "data" / "manifests" / "mosei.csv"
    build_manifest("mosei", tmp_path / "data" / "mosei", out, relative=True)
    raw = pl.read_csv(out)
    assert raw["video"][0].startswith("../mosei/Raw/")
    import shutil

    shutil.move(tmp_path / "data", tmp_path / "moved")  # a relative manifest survives a move
    m = read_manifest(tmp_path / "moved" / "manifests" / "mosei.csv")
    assert len(m) == 10 and m.df["video"][0].startswith(str(tmp_path / "moved"))
    with pytest.raises(RecipeError, match="2 row"):
        build_manifest("mosei", tmp_path / "moved" / "mosei", tmp_path / "strict.csv", strict=True)
    assert not (tmp_path / "strict.csv").exists() and (tmp_path / "strict.csv.report.txt").exists()


def test_empty_media_file_is_reported_and_kept(tmp_path: Path) -> None:
    make_dfew(tmp_path / "dfew", n=10)
    (tmp_path / "dfew" / "Clip" / "original" / "00003.mp4").write_bytes(b"")
    res = build_manifest("dfew", tmp_path / "dfew", tmp_path / "d.csv")
    empty = [p for p in res.report.problems if p.kind == "empty_media"]
    assert len(empty) == 1 and empty[0].file == "test(single-labeled)/set_3.csv" and not empty[0].dropped
    assert "3" in read_manifest(tmp_path / "d.csv").clip_ids


def test_mer2025_candidates(tmp_path: Path) -> None:
    from tests._recipes_helpers import touch, write_csv

    make_mer2025(tmp_path / "mer", n=5)
    write_csv(tmp_path / "mer" / "track_all_candidates.csv", ["name"], [["cand_1"], ["cand_2"], ["sample_00000000"]])
    touch(tmp_path / "mer" / "video" / "cand_1.mp4")
    touch(tmp_path / "mer" / "video" / "cand_2.mp4")
    res = build_manifest("mer2025", tmp_path / "mer", tmp_path / "c.csv", options={"candidates": "true"})
    df = read_manifest(tmp_path / "c.csv").df
    cands = df.filter(pl.col("split") == "candidate")
    assert cands["clip_id"].to_list() == ["cand_1", "cand_2"] and cands["label"].null_count() == 2
    dup = [p for p in res.report.problems if p.kind == "duplicate_id"]
    assert len(dup) == 1 and dup[0].file == "track_all_candidates.csv" and dup[0].row == 3


def test_manifest_from_help_shows_each_recipes_folder_layout() -> None:
    from clmer_features.recipes import get_recipe, layout

    res = CliRunner().invoke(cli, ["manifest", "from", "--help"])
    assert res.exit_code == 0, res.output
    for name in available():
        lines = layout(get_recipe(name))
        assert lines and any("ROOT/" in ln for ln in lines), name
        for ln in lines:  # shown as written, one per line (never rewrapped)
            assert ln.rstrip() in res.output, (name, ln)
    assert "ROOT/EmoLabel_DataSplit/test(single-labeled)/set_{1..5}.csv" in res.output
