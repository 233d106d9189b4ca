"""MELD (Multimodal EmotionLines Dataset): English TV dialogue, 7 emotions, 3 sentiments.

Layout of the release::

    ROOT/train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv
        Sr No., Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID,
        Season, Episode, StartTime, EndTime
    ROOT/.../train_splits/dia{D}_utt{U}.mp4
    ROOT/.../dev_splits_complete/dia{D}_utt{U}.mp4
    ROOT/.../output_repeated_splits_test/dia{D}_utt{U}.mp4

Files and folders are searched up to four levels below ROOT. Quirks handled:
some CSV copies are Windows-1252, not UTF-8 (decoded and noted); a few videos
are missing from the real release (reported; dropped unless ``keep_missing``);
macOS ``._`` files are ignored. ``clip_id`` is ``<split>_dia{D}_utt{U}`` with the
release's split name (train/dev/test) because dialogue ids restart per split;
the manifest ``split`` is train/valid/test. StartTime/EndTime are times in the
episode, not in the clip, so they are kept as ``episode_start``/``episode_end``.
``text_only=True`` writes a manifest without media (for text features).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from clmer_features.recipes.common import (
    VIDEO_EXTS, MediaIndex, RecipeError, RecipeReport, RecipeResult, find_dir, find_file,
    handle_missing, read_csv_rows, report_unlabelled, resolve_media,
)

NAME = "meld"
OPTIONS: dict[str, str] = {"text_only": "true: no media lookup, a text-only manifest"}
SPLITS = (
    ("train", "train_sent_emo.csv", "train_splits", "train"),
    ("dev", "dev_sent_emo.csv", "dev_splits_complete", "valid"),
    ("test", "test_sent_emo.csv", "output_repeated_splits_test", "test"),
)
EMOTIONS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
SENTIMENTS = ("negative", "neutral", "positive")
REQUIRED = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")


def build(root: Path, *, keep_missing: bool = False, text_only: bool | str = False) -> RecipeResult:
    root = Path(root)
    text_only = str(text_only).lower() in ("1", "true", "yes")
    report = RecipeReport(NAME, str(root))
    rows: list[dict[str, Any]] = []
    found_any = False
    for tag, csv_name, folder, split in SPLITS:
        csv_path = find_file(root, csv_name)
        if csv_path is None:
            report.note(f"{csv_name} not found under {root}: no {split} rows")
            continue
        found_any = True
        index = MediaIndex(None, VIDEO_EXTS)
        video_dir = None
        if not text_only:
            video_dir = find_dir(root, folder)
            if video_dir is None:
                report.note(f"video folder {folder}/ not found under {root}: every {tag} video is missing")
            index = MediaIndex(video_dir, VIDEO_EXTS)
        seen: dict[str, int] = {}
        for i, rec in read_csv_rows(csv_path, report, REQUIRED):
            report.rows_read += 1
            try:
                dia, utt = int(rec["Dialogue_ID"]), int(rec["Utterance_ID"])
            except (TypeError, ValueError):
                fld = "Dialogue_ID" if not str(rec["Dialogue_ID"]).strip().isdigit() else "Utterance_ID"
                report.add("unparseable_row", csv_name, i, fld, f"not an integer: {rec[fld]!r}", dropped=True)
                continue
            emotion = rec["Emotion"].lower()
            if emotion not in EMOTIONS:
                report.add("unparseable_row", csv_name, i, "Emotion", f"unknown emotion {rec['Emotion']!r}", dropped=True)
                continue
            stem = f"dia{dia}_utt{utt}"
            clip_id = f"{tag}_{stem}"
            if clip_id in seen:
                report.add("duplicate_id", csv_name, i, "Utterance_ID", f"{stem} already on row {seen[clip_id]}", dropped=True)
                continue
            sentiment = rec["Sentiment"].lower()
            if sentiment not in SENTIMENTS:
                report.add("bad_value", csv_name, i, "Sentiment", f"unknown sentiment {rec['Sentiment']!r}", dropped=False)
                sentiment = None
            row: dict[str, Any] = {
                "clip_id": clip_id, "text": rec["Utterance"] or None, "language": "en",
                "label": emotion, "split": split, "speaker": rec["Speaker"] or None,
                "sentiment": sentiment, "dialogue_id": str(dia), "utterance_id": str(utt),
                "season": rec.get("Season"), "episode": rec.get("Episode"),
                "episode_start": rec.get("StartTime"), "episode_end": rec.get("EndTime"),
            }
            if not text_only:
                video = resolve_media(index, stem, report, csv_name, i, "Dialogue_ID/Utterance_ID")
                if video is None:
                    expected = (video_dir or root / folder) / f"{stem}.mp4"
                    if not handle_missing(row, expected, "video", report, csv_name, i, keep_missing):
                        continue
                else:
                    row["video"] = str(video.resolve())
            seen[clip_id] = i
            rows.append(row)
        if not text_only:
            report_unlabelled(index, report, f"{tag} video")
    if not found_any:
        raise RecipeError(f"{root}: none of {', '.join(s[1] for s in SPLITS)} found")
    report.rows_written = len(rows)
    return RecipeResult(rows, report)
