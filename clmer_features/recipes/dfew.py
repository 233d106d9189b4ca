"""DFEW (Dynamic Facial Expressions in the Wild): movie clips, 7 emotions, 5 folds.

Layout of the release::

    ROOT/EmoLabel_DataSplit/train(single-labeled)/set_{1..5}.csv   video_name,label
    ROOT/EmoLabel_DataSplit/test(single-labeled)/set_{1..5}.csv
    ROOT/Clip/original/<video_name>.mp4      (or ``video_dir=`` another folder)

Labels 1..7 are happy, sad, neutral, angry, surprise, disgust, fear. The five
test sets partition the single-labelled clips: a clip's ``fold`` is the set
whose test file lists it (train on the other four). Checked and reported: a
clip in two test sets, a clip in the train and test file of the same set, a
label that differs between files, a clip only in train files (no fold). The
split files write ``video_name`` as a bare number (``1``) where the media may
be zero-padded (``00001.mp4``): such ids are matched and reported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from clmer_features.recipes.common import (
    VIDEO_EXTS, MediaIndex, RecipeError, RecipeReport, RecipeResult, find_dir,
    handle_missing, read_csv_rows, report_unlabelled, resolve_media,
)

NAME = "dfew"
OPTIONS: dict[str, str] = {"video_dir": "folder of the clip videos, relative to ROOT (default: Clip/original)"}
LABELS = {1: "happy", 2: "sad", 3: "neutral", 4: "angry", 5: "surprise", 6: "disgust", 7: "fear"}
FOLDS = range(1, 6)
VIDEO_DIRS = ("Clip/original", "original", "Clip/videos", "videos", "Clip")


def _read_set(path: Path, report: RecipeReport) -> list[tuple[int, str, int]]:
    out: list[tuple[int, str, int]] = []
    for i, rec in read_csv_rows(path, report, ("video_name", "label")):
        report.rows_read += 1
        name = rec["video_name"]
        if not name:
            report.add("unparseable_row", path.name, i, "video_name", "empty", dropped=True)
            continue
        try:
            label = int(float(rec["label"]))
        except (TypeError, ValueError):
            report.add("unparseable_row", path.name, i, "label", f"not an integer: {rec['label']!r}", dropped=True)
            continue
        if label not in LABELS:
            report.add("unparseable_row", path.name, i, "label", f"label {label} not in 1..7", dropped=True)
            continue
        out.append((i, name, label))
    return out


def build(root: Path, *, keep_missing: bool = False, video_dir: str | None = None) -> RecipeResult:
    root = Path(root)
    report = RecipeReport(NAME, str(root))
    split_dir = find_dir(root, "EmoLabel_DataSplit")
    if split_dir is None:
        raise RecipeError(f"{root}: no EmoLabel_DataSplit/ folder (the DFEW split files)")
    if video_dir is not None:
        vdir: Path | None = root / video_dir
        if not vdir.is_dir():
            raise RecipeError(f"{vdir}: video_dir not found")
    else:
        vdir = next((root / d for d in VIDEO_DIRS if len(MediaIndex(root / d, VIDEO_EXTS))), None)
        if vdir is None:
            report.note(f"no video folder found under {root} (tried {', '.join(VIDEO_DIRS)}): every video is missing")
    index = MediaIndex(vdir, VIDEO_EXTS)
    tests: dict[str, tuple[int, int, str, int]] = {}  # name -> (fold, label, file, row)
    trains: dict[int, dict[str, tuple[int, str, int]]] = {}
    for k in FOLDS:
        tpath = split_dir / "test(single-labeled)" / f"set_{k}.csv"
        rpath = split_dir / "train(single-labeled)" / f"set_{k}.csv"
        if not tpath.is_file():
            raise RecipeError(f"{tpath}: split file missing (DFEW has test sets set_1..set_5)")
        fname = f"test(single-labeled)/set_{k}.csv"
        for i, name, label in _read_set(tpath, report):
            if name in tests:
                f0, _, file0, row0 = tests[name]
                report.add("fold_conflict", fname, i, "video_name",
                           f"clip {name} already in the test set of fold {f0} ({file0} row {row0})", dropped=True)
                continue
            tests[name] = (k, label, fname, i)
        trains[k] = {}
        if rpath.is_file():
            rname = f"train(single-labeled)/set_{k}.csv"
            for i, name, label in _read_set(rpath, report):
                trains[k][name] = (label, rname, i)
        else:
            report.note(f"{rpath.name} of train(single-labeled) missing: fold {k} not cross-checked")
    bad: set[str] = set()
    for k, train in trains.items():
        for name, (label, rname, i) in train.items():
            if name not in tests:
                report.add("no_fold", rname, i, "video_name", f"clip {name} is in no test set", dropped=True)
            elif tests[name][0] == k:
                report.add("fold_conflict", rname, i, "video_name",
                           f"clip {name} is in both the train and the test file of set {k}", dropped=True)
                bad.add(name)
            elif tests[name][1] != label:
                report.add("label_conflict", rname, i, "label",
                           f"clip {name}: label {label} here, {tests[name][1]} in {tests[name][2]}", dropped=True)
                bad.add(name)
    rows: list[dict[str, Any]] = []
    for name, (k, label, fname, i) in tests.items():
        if name in bad:
            continue
        row: dict[str, Any] = {"clip_id": name, "label": LABELS[label], "label_id": label, "fold": str(k)}
        video = resolve_media(index, name, report, fname, i, "video_name")
        if video is None:
            expected = (vdir or root / VIDEO_DIRS[0]) / f"{name}.mp4"
            if not handle_missing(row, expected, "video", report, fname, i, keep_missing):
                continue
        else:
            row["video"] = str(video.resolve())
        rows.append(row)
    report_unlabelled(index, report, "video")
    report.rows_written = len(rows)
    return RecipeResult(rows, report)
