"""MER2025 (MER-SEMI / OV-MER tracks): Mandarin video clips with subtitles.

Layout of the release (``mer2025-dataset``)::

    ROOT/video/<name>.mp4   ROOT/audio/<name>.wav
    ROOT/subtitle_chieng.csv                 name, chinese, english
    ROOT/track1_train_disdim.csv             name, discrete, valence   (6 classes)
    ROOT/track1_test_dis.csv                 name, discrete[, valence]  (when released)
    ROOT/track2_train_ovmerd.csv, track2_train_mercaptionplus.csv      name, openset
    ROOT/track3_train_ovmerd.csv, track3_train_mercaptionplus.csv      name, reason

Options: ``track=1`` (default; label = discrete class, label_value = valence),
``track=2`` (label = the open-vocabulary label list as written, also in
``openset``), ``track=3`` (``reason`` column, no label); ``text=zh``
(default) or ``text=en`` picks the subtitle used as ``text``/``language``;
both are kept as ``text_zh``/``text_en``. ``candidates=true`` adds the
unlabelled test candidates (``track_all_candidates.csv``, split ``candidate``)
so their features can be extracted too. A clip without a subtitle row is
kept and reported; ``video`` and ``audio`` are both filled when present.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from clmer_features.recipes.common import (
    AUDIO_EXTS, VIDEO_EXTS, MediaIndex, RecipeError, RecipeReport, RecipeResult, find_file,
    handle_missing, parse_float, read_csv_rows, resolve_media,
)

NAME = "mer2025"
OPTIONS: dict[str, str] = {"track": "1 (default), 2 or 3", "text": "zh (default) or en",
                           "candidates": "true: add track_all_candidates.csv clips (unlabelled, split 'candidate')"}
TRACK1_CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")
TRACK_FILES = {
    "1": (("track1_train_disdim.csv", "train"), ("track1_test_dis.csv", "test")),
    "2": (("track2_train_ovmerd.csv", "train"), ("track2_train_mercaptionplus.csv", "train")),
    "3": (("track3_train_ovmerd.csv", "train"), ("track3_train_mercaptionplus.csv", "train")),
}
TRACK_COLUMN = {"1": "discrete", "2": "openset", "3": "reason"}


def _subtitles(root: Path, report: RecipeReport) -> dict[str, tuple[str | None, str | None]]:
    path = find_file(root, "subtitle_chieng.csv", max_depth=2)
    if path is None:
        report.note("subtitle_chieng.csv not found: no text")
        return {}
    out: dict[str, tuple[str | None, str | None]] = {}
    for i, rec in read_csv_rows(path, report, ("name", "chinese", "english")):
        if rec["name"] in out:
            report.add("duplicate_id", path.name, i, "name", f"{rec['name']} listed twice; first kept", dropped=False)
            continue
        out[rec["name"]] = (rec["chinese"] or None, rec["english"] or None)
    return out


def build(root: Path, *, keep_missing: bool = False, track: str = "1", text: str = "zh",
          candidates: str | bool = False) -> RecipeResult:
    root = Path(root)
    track, text = str(track), str(text)
    with_candidates = str(candidates).lower() in ("1", "true", "yes")
    if track not in TRACK_FILES:
        raise RecipeError(f"mer2025: track must be 1, 2 or 3, not {track!r}")
    if text not in ("zh", "en"):
        raise RecipeError(f"mer2025: text must be zh or en, not {text!r}")
    report = RecipeReport(NAME, str(root))
    names = list(TRACK_FILES[track]) + ([("track_all_candidates.csv", "candidate")] if with_candidates else [])
    files = [(find_file(root, n, max_depth=2), n, split) for n, split in names]
    if all(p is None for p, _, _ in files):
        raise RecipeError(f"{root}: none of {', '.join(n for _, n, _ in files)} found (MER2025 track {track})")
    subs = _subtitles(root, report)
    videos = MediaIndex(root / "video", VIDEO_EXTS)
    audios = MediaIndex(root / "audio", AUDIO_EXTS)
    if not len(videos) and not len(audios):
        report.note(f"no video/ or audio/ files under {root}: every clip's media is missing")
    col = TRACK_COLUMN[track]
    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for path, fname, split in files:
        if path is None:
            report.note(f"{fname} not found: skipped")
            continue
        is_cand = split == "candidate"
        for i, rec in read_csv_rows(path, report, ("name",) if is_cand else ("name", col)):
            report.rows_read += 1
            name = rec["name"]
            if not name:
                report.add("unparseable_row", fname, i, "name", "empty", dropped=True)
                continue
            if name in seen:
                report.add("duplicate_id", fname, i, "name", f"{name} already read from {seen[name]}", dropped=True)
                continue
            value = rec.get(col) or None
            row: dict[str, Any] = {"clip_id": name, "split": split, "source": path.stem}
            if is_cand:
                pass  # unlabelled
            elif track == "1":
                if value is None or value.lower() not in TRACK1_CLASSES:
                    report.add("unparseable_row", fname, i, col, f"unknown class {value!r}", dropped=True)
                    continue
                row["label"] = value.lower()
                try:
                    row["label_value"] = parse_float(rec.get("valence"))
                except ValueError as exc:
                    report.add("bad_value", fname, i, "valence", str(exc), dropped=False)
            elif track == "2":
                if value is None:
                    report.add("unparseable_row", fname, i, col, "empty open-set label", dropped=True)
                    continue
                row["label"] = value
                row["openset"] = value
            else:
                row["reason"] = value
            zh, en = subs.get(name, (None, None))
            row.update(text=zh if text == "zh" else en, language=text, text_zh=zh, text_en=en)
            video = resolve_media(videos, name, report, fname, i, "name")
            audio = resolve_media(audios, name, report, fname, i, "name")
            row["video"] = str(video.resolve()) if video else None
            row["audio"] = str(audio.resolve()) if audio else None
            if video is None and audio is None:
                if not handle_missing(row, root / "video" / f"{name}.mp4", "video", report, fname, i, keep_missing):
                    continue
            if name not in subs and subs:
                report.add("missing_text", fname, i, "name", f"{name} has no row in subtitle_chieng.csv", dropped=False)
            seen[name] = fname
            rows.append(row)
    report.rows_written = len(rows)
    return RecipeResult(rows, report)
