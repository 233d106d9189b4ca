"""Shared plumbing for dataset recipes: problem reports, media lookup, label files, writing.

A recipe reads a dataset's official label files and returns manifest rows
plus a ``RecipeReport``. Nothing is dropped silently: every row that is left
out, and every id that had to be matched loosely, is a problem with its file,
row and field, and the report counts them by kind.

Missing media policy: a row whose media file is not found is *dropped* and
reported (``missing_media``), because ``manifest check`` treats a missing
file as an error. ``keep_missing=True`` keeps such rows with the media
column empty and the expected path in the ``missing_media`` column, so text
features can still be built for them.
"""
from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import polars as pl

from clmer_features.errors import ClmerError

# Columns every recipe writes, in this order; dataset-specific ones follow.
BASE_COLUMNS = (
    "clip_id", "video", "audio", "start", "end", "text", "language",
    "label", "label_value", "split", "fold", "speaker",
)
FLOAT_BASE = ("start", "end", "label_value")
SPLIT_NAMES = {"train": "train", "valid": "valid", "val": "valid", "dev": "valid", "test": "test"}
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".m4a")


class RecipeError(ClmerError):
    """A dataset folder cannot be turned into a manifest at all (no label file, nothing usable)."""


@dataclass(frozen=True)
class Problem:
    kind: str          # e.g. missing_media, unparseable_row, id_mismatch, unlabelled_media
    file: str
    row: int | None    # 1-based data row (CSV header not counted) or line number for text files
    field: str | None
    message: str
    dropped: bool      # True: the row is not in the manifest

    def line(self) -> str:
        where = self.file
        if self.row is not None:  # CSV: data row (line = row + 1, the header is line 1); text files: line
            where += f" row {self.row} (line {self.row + 1})" if self.file.lower().endswith(".csv") else f" line {self.row}"
        where += f", field {self.field!r}" if self.field else ""
        return f"{where}: {self.message}" + (" [row dropped]" if self.dropped else "")


@dataclass
class RecipeReport:
    dataset: str
    root: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_written: int = 0

    def add(self, kind: str, file: str | os.PathLike[str], row: int | None, fld: str | None,
            message: str, dropped: bool) -> None:
        self.problems.append(Problem(kind, str(file), row, fld, message, dropped))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(p.kind for p in self.problems).items()))

    @property
    def dropped(self) -> int:
        return sum(p.dropped for p in self.problems)

    def summary(self, max_lines: int = 20) -> str:
        """A human summary: totals, counts by kind, then the first problems."""
        lines = [
            f"{self.dataset}: {self.rows_written} clips written from {self.rows_read} label rows "
            f"({self.dropped} dropped, {len(self.problems) - self.dropped} kept with a warning)"
        ]
        lines += [f"  note: {n}" for n in self.notes]
        for kind, n in self.counts().items():
            lines.append(f"  {kind}: {n}")
        shown = self.problems[:max_lines]
        lines += [f"  - {p.line()}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more (see the report file)")
        return "\n".join(lines)

    def full_text(self) -> str:
        return "\n".join([self.summary(max_lines=0)] + [p.line() for p in self.problems]) + "\n"


@dataclass
class RecipeResult:
    rows: list[dict[str, Any]]
    report: RecipeReport


# ----------------------------------------------------------------------------- text files


def read_text(path: Path, report: RecipeReport | None = None) -> str:
    """Decode a label file: UTF-8 (with or without BOM), else Windows-1252, which is noted."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if report is not None:
            line = data.count(b"\n", 0, exc.start) + 1
            report.note(f"{path.name}: not UTF-8 (first bad byte 0x{data[exc.start]:02x} on line {line}); "
                        "decoded as Windows-1252")
        return data.decode("cp1252", errors="replace")


def read_csv_rows(path: Path, report: RecipeReport, required: Iterable[str],
                  delimiter: str = ",") -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (1-based data row, row dict) with stripped header names; checks required columns."""
    text = read_text(path, report)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    missing = [c for c in required if c not in header]
    if missing:
        raise RecipeError(f"{path}: missing column(s) {missing}; found {header}")
    for i, row in enumerate(reader, start=1):
        if None in row:  # more fields than the header
            report.add("unparseable_row", path.name, i, None,
                       f"{len(header) + len(row[None])} fields, header has {len(header)}", dropped=True)
            continue
        yield i, {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}


def parse_float(value: str | None) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        out = float(value)
    except ValueError:
        raise ValueError(f"not a number: {value!r}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise ValueError(f"not a finite number: {value!r}")
    return out


def norm_split(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    return SPLIT_NAMES.get(value.strip().lower())


def find_file(root: Path, name: str, max_depth: int = 4) -> Path | None:
    """``root/name`` or the shallowest file called ``name`` below root."""
    if (root / name).is_file():
        return root / name
    return _find(root, lambda p: p.is_file() and p.name == name, max_depth)


def find_dir(root: Path, name: str, max_depth: int = 4) -> Path | None:
    if (root / name).is_dir():
        return root / name
    return _find(root, lambda p: p.is_dir() and p.name == name, max_depth)


def _find(root: Path, pred: Callable[[Path], bool], max_depth: int) -> Path | None:
    level = [root]
    for _ in range(max_depth):
        nxt: list[Path] = []
        for d in level:
            try:
                children = sorted(d.iterdir())
            except OSError:
                continue
            for c in children:
                if c.name.startswith("."):
                    continue
                if pred(c):
                    return c
                if c.is_dir():
                    nxt.append(c)
        level = nxt
    return None


# ----------------------------------------------------------------------------- media lookup


def loose_stem(stem: str) -> str:
    """A stem with case and zero-padding of numbers normalised: 'Dia01_Utt007' -> 'dia1_utt7'."""
    return re.sub(r"\d+", lambda m: str(int(m.group())), stem.strip().lower())


class MediaIndex:
    """Files of one folder (optionally recursive), looked up by stem, exactly or loosely.

    ``lookup`` returns (path, how) where how is "exact", "loose" (the label id
    and the file name differ only in case or zero-padding) or None.
    macOS resource forks (``._name``) and hidden files are ignored.
    """

    def __init__(self, folder: Path | None, exts: tuple[str, ...], recursive: bool = False):
        self.folder = folder
        self.exact: dict[str, Path] = {}
        self.loose: dict[str, list[Path]] = {}
        self.used: set[Path] = set()
        if folder is None or not folder.is_dir():
            return
        files = folder.rglob("*") if recursive else folder.iterdir()
        for p in sorted(files):
            if p.name.startswith(".") or p.suffix.lower() not in exts or not p.is_file():
                continue
            key = str(p.relative_to(folder).with_suffix("")) if recursive else p.stem
            self.exact.setdefault(key, p)
            self.loose.setdefault(loose_stem(key), []).append(p)

    def __len__(self) -> int:
        return len(self.exact)

    def lookup(self, stem: str) -> tuple[Path | None, str | None]:
        p = self.exact.get(stem)
        if p is not None:
            self.used.add(p)
            return p, "exact"
        cands = self.loose.get(loose_stem(stem), [])
        if len(cands) == 1:
            self.used.add(cands[0])
            return cands[0], "loose"
        return None, None

    def unused(self) -> list[Path]:
        return sorted(set(self.exact.values()) - self.used)


def resolve_media(index: MediaIndex, stem: str, report: RecipeReport, file: str, row: int,
                  fld: str) -> Path | None:
    """Look a clip's media up; report a loose match (kept) or a miss (caller decides)."""
    path, how = index.lookup(stem)
    if path is not None and path.stat().st_size == 0:
        report.add("empty_media", file, row, fld, f"{path} is empty (0 bytes): its extraction will fail", dropped=False)
    if how == "loose" and path is not None:
        report.add("id_mismatch", file, row, fld,
                   f"label id {stem!r} matched media file {path.name!r} (differs in case/zero-padding)",
                   dropped=False)
    return path


def handle_missing(row: dict[str, Any], expected: Path | str, col: str, report: RecipeReport, file: str,
                   line: int, keep_missing: bool) -> bool:
    """Record a missing media file. Returns True when the row is kept (``keep_missing``)."""
    report.add("missing_media", file, line, col, f"media file not found: {expected}", dropped=not keep_missing)
    if keep_missing:
        row[col] = None
        row["missing_media"] = str(expected)
    return keep_missing


def report_unlabelled(index: MediaIndex, report: RecipeReport, what: str, limit: int = 50) -> None:
    """Media files that no label row refers to: reported (not added), capped at ``limit`` lines."""
    extra = index.unused()
    for p in extra[:limit]:
        report.add("unlabelled_media", str(p.parent), None, None, f"{what} {p.name} is not in the manifest (no label row, or its row was dropped)", dropped=False)
    if len(extra) > limit:
        report.note(f"{len(extra) - limit} more {what} files without a label row not listed")


# ----------------------------------------------------------------------------- writing


def rows_to_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows -> DataFrame with the base columns first (always present) and extra ones after."""
    extra: list[str] = []
    for r in rows:
        for k in r:
            if k not in BASE_COLUMNS and k not in extra:
                extra.append(k)
    data: dict[str, list[Any]] = {c: [r.get(c) for r in rows] for c in (*BASE_COLUMNS, *extra)}
    schema: dict[str, Any] = {c: (pl.Float64 if c in FLOAT_BASE else pl.Utf8) for c in BASE_COLUMNS}
    for c in extra:
        vals = [v for v in data[c] if v is not None]
        if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            schema[c] = pl.Int64  # ids stay ids: label_id 1, not 1.0
        elif vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            schema[c] = pl.Float64
        else:
            schema[c] = pl.Utf8
            data[c] = [None if v is None else str(v) for v in data[c]]
    data["fold"] = [None if v is None else str(v) for v in data["fold"]]
    return pl.DataFrame(data, schema=schema)


def write_manifest(rows: list[dict[str, Any]], out: Path) -> Path:
    """Write rows as CSV (UTF-8) or Parquet, by the extension of ``out``; atomically."""
    df = rows_to_frame(rows)
    from clmer_features.store.layout import atomic_output

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise RecipeError(f"{out}: unknown manifest extension {suffix!r} (use .csv or .parquet)")
    with atomic_output(out) as tmp:
        df.write_csv(tmp) if suffix == ".csv" else df.write_parquet(tmp)
    return out
