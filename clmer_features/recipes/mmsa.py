"""MMSA-style label files (CH-SIMS, CH-SIMS v2, CMU-MOSI, CMU-MOSEI), shared by their recipes.

Layout (as released by the MMSA authors)::

    ROOT/label.csv            video_id, clip_id, text, label, [label_T, label_A, label_V,]
                              annotation, mode   (mode: train / valid / test)
    ROOT/Raw/<video_id>/<clip_id>.mp4

``label`` is the sentiment value (CH-SIMS: [-1, 1]; MOSI/MOSEI: [-3, 3]); it
becomes ``label_value``; ``annotation`` (Negative/Neutral/Positive) becomes
``label`` (lower-cased). ``clip_id`` in the manifest is ``<video_id>_<clip_id>``
as written in the label file. A label id that differs from the file name only
in zero-padding or case (``1`` vs ``0001.mp4``) is matched and reported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from clmer_features.recipes.common import (
    VIDEO_EXTS, MediaIndex, RecipeError, RecipeReport, RecipeResult, find_dir, find_file,
    handle_missing, norm_split, parse_float, read_csv_rows, report_unlabelled, resolve_media,
)

REQUIRED = ("video_id", "clip_id", "text", "label", "mode")
UNIMODAL = ("label_T", "label_A", "label_V")


def sentiment_class(value: float) -> str:
    return "positive" if value > 0 else "negative" if value < 0 else "neutral"


def build_mmsa(
    root: Path,
    dataset: str,
    *,
    language: str,
    value_range: tuple[float, float],
    keep_unimodal: bool,
    keep_missing: bool = False,
    label_file: str | None = None,
) -> RecipeResult:
    root = Path(root)
    report = RecipeReport(dataset, str(root))
    names = [label_file] if label_file else ["label.csv", "meta.csv"]
    label_path = next((p for p in (find_file(root, n) for n in names) if p is not None), None)
    if label_path is None:
        raise RecipeError(f"{root}: no {' or '.join(names)} found (the MMSA label file)")
    raw_dir = find_dir(root, "Raw")
    if raw_dir is None:
        report.note(f"no Raw/ folder under {root}: every clip's video is missing")
    index = MediaIndex(raw_dir, VIDEO_EXTS, recursive=True)
    fname = label_path.name
    lo, hi = value_range
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, rec in read_csv_rows(label_path, report, REQUIRED):
        report.rows_read += 1
        vid, cid = rec["video_id"], rec["clip_id"]
        if not vid or not cid:
            report.add("unparseable_row", fname, i, "video_id" if not vid else "clip_id", "empty id", dropped=True)
            continue
        clip_id = f"{vid}_{cid}"
        if clip_id in seen:
            report.add("duplicate_id", fname, i, "clip_id", f"{clip_id!r} already on row {seen[clip_id]}", dropped=True)
            continue
        try:
            value = parse_float(rec["label"])
        except ValueError as exc:
            report.add("unparseable_row", fname, i, "label", str(exc), dropped=True)
            continue
        if value is None or not lo <= value <= hi:
            report.add("unparseable_row", fname, i, "label",
                       f"sentiment {rec['label']!r} outside [{lo}, {hi}]", dropped=True)
            continue
        split = norm_split(rec["mode"])
        if split is None:
            report.add("unparseable_row", fname, i, "mode", f"unknown split {rec['mode']!r}", dropped=True)
            continue
        annotation = (rec.get("annotation") or "").strip().lower()
        row: dict[str, Any] = {
            "clip_id": clip_id, "video": None, "text": rec["text"] or None, "language": language,
            "label": annotation or sentiment_class(value), "label_value": value, "split": split,
            "video_id": vid,
        }
        if keep_unimodal:
            bad = False
            for col in UNIMODAL:
                try:
                    row[col] = parse_float(rec.get(col))
                except ValueError as exc:
                    report.add("unparseable_row", fname, i, col, str(exc), dropped=True)
                    bad = True
                    break
            if bad:
                continue
        video = resolve_media(index, f"{vid}/{cid}", report, fname, i, "clip_id")
        if video is None:
            expected = (raw_dir or root / "Raw") / vid / f"{cid}.mp4"
            if not handle_missing(row, expected, "video", report, fname, i, keep_missing):
                continue
        else:
            row["video"] = str(video.resolve())
        seen[clip_id] = i
        rows.append(row)
    report_unlabelled(index, report, "video")
    report.rows_written = len(rows)
    return RecipeResult(rows, report)
