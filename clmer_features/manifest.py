"""Manifests: one row per clip, read with polars, validated, fingerprinted.

A manifest is a CSV, Parquet or JSONL file. ``clip_id`` is required, and at
least one of ``video``, ``audio`` (paths relative to the manifest's folder, or
absolute) or ``text``. Optional: ``start``, ``end`` (seconds within the
media), ``language``, ``label``, ``label_value``, ``split``, ``fold``,
``speaker``; any other column is kept.

Every problem is reported with its file, row and column; reading never stops
at the first one.

A media file that is not there does not refuse the manifest: its row gets a
``missing`` reason ("file not found: ...", "symlink loop: ...") and a cache
key that changes when the file appears, and extraction puts the row in the
ledger (kind ``missing``) and goes on. When most rows' files are missing the
manifest is refused (the paths are relative to another folder), and
``strict=True`` refuses any missing file.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from clmer_features.errors import ClmerError, ManifestError

MEDIA_COLUMNS = ("video", "audio")
STRING_COLUMNS = ("clip_id", "video", "audio", "text", "language", "label", "split", "speaker")
FLOAT_COLUMNS = ("start", "end", "label_value")
MAX_SHOWN_PROBLEMS = 20
# Refuse a manifest when more than this share of its media rows have no file: a wrong folder.
MOST_MISSING = 0.5
FINGERPRINT_BYTES = 1 << 20  # hash the first and the last MiB of each file


class MediaFolderError(ManifestError):
    """Most media files of a manifest are missing: one line (the paths point at another folder)."""

    def __init__(self, path: str, line: str):
        ClmerError.__init__(self, line)
        self.path, self.problems, self.total = path, [line], 1


@dataclass
class Manifest:
    """A validated manifest: ``df`` holds one row per clip with absolute media paths
    and the computed ``media_key`` / ``text_key`` (the cache keys)."""

    path: Path
    dataset: str
    df: pl.DataFrame

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def clip_ids(self) -> list[str]:
        return self.df["clip_id"].to_list()

    def __len__(self) -> int:
        return self.df.height

    def keys(self, input: str) -> list[str | None]:
        """Cache keys of every clip for an extractor input: 'video'/'audio'/'media' or 'text'."""
        col = "text_key" if input == "text" else "media_key"
        return self.df[col].to_list()

    def missing_count(self) -> int:
        """Rows whose media file is not there (ledger kind ``missing`` when extracted)."""
        return int(self.df["missing"].is_not_null().sum()) if "missing" in self.df.columns else 0

    def rows(self) -> list[dict[str, Any]]:
        return self.df.to_dicts()

    def fingerprint(self) -> str:
        """A digest of the manifest's clips and their keys and labels (for run records)."""
        cols = [c for c in ("clip_id", "media_key", "text_key", "label", "label_value", "split", "fold") if c in self.df.columns]
        h = hashlib.sha256()
        for row in self.df.select(cols).iter_rows():
            h.update(repr(row).encode())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        df = self.df

        def counts(col: str) -> dict[str, int]:
            if col not in df.columns:
                return {}
            vc = df[col].cast(pl.Utf8).fill_null("<none>").value_counts(sort=True)
            return {str(k): int(v) for k, v in vc.iter_rows()}

        total = 0
        seen: set[str] = set()
        for col in MEDIA_COLUMNS:
            if col in df.columns:
                for p in df[col].drop_nulls().to_list():
                    if p not in seen and os.path.isfile(p):
                        seen.add(p)
                        total += os.path.getsize(p)
        return {
            "manifest": str(self.path),
            "dataset": self.dataset,
            "clips": df.height,
            "with_video": int(df["video"].is_not_null().sum()) if "video" in df.columns else 0,
            "with_audio": int(df["audio"].is_not_null().sum()) if "audio" in df.columns else 0,
            "with_text": int(df["text"].is_not_null().sum()) if "text" in df.columns else 0,
            "missing_media": self.missing_count(),
            "languages": counts("language"),
            "labels": counts("label"),
            "splits": counts("split"),
            "media_bytes": total,
        }


# ----------------------------------------------------------------------------- reading


def _row_ref(fmt: str, i: int) -> str:
    """How a person finds row i (0-based data row) in the file."""
    if fmt == "csv":
        return f"row {i + 1} (line {i + 2})"
    if fmt == "jsonl":
        return f"row {i + 1} (line {i + 1})"
    return f"row {i + 1}"


def _check_utf8(path: Path) -> str | None:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return (
            f"{path}: line {line}, byte {col}: not valid UTF-8 (0x{data[exc.start]:02x}); "
            "re-save the file as UTF-8 (it looks like Windows-1252 or Latin-1)"
        )
    return None


def _check_jsonl_values(path: Path) -> list[str]:
    """Rows of a JSON-lines manifest whose known columns hold a list or an object
    (polars would fail on the whole file, or turn the list into its JSON text)."""
    problems = []
    row = -1
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row += 1
            try:
                obj = json.loads(line)
            except ValueError as exc:
                problems.append(f"{path.name} line {line_no}: not JSON ({exc})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{path.name} line {line_no}: a {type(obj).__name__}, not a JSON object")
                continue
            for col in (*STRING_COLUMNS, *FLOAT_COLUMNS):
                v = obj.get(col)
                if isinstance(v, (list, dict)):
                    want = "a number" if col in FLOAT_COLUMNS else "a string"
                    problems.append(f"{path.name} row {row + 1} (line {line_no}), column {col!r}: expected {want}, "
                                    f"got a {'list' if isinstance(v, list) else 'JSON object'}: {json.dumps(v)[:60]}")
    return problems


def _read_table(path: Path) -> tuple[pl.DataFrame, str]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        bad = _check_utf8(path)
        if bad:
            raise ManifestError(str(path), [bad])
        sep = "\t" if suffix == ".tsv" else ","
        try:
            return pl.read_csv(path, infer_schema=False, separator=sep), "csv"
        except pl.exceptions.PolarsError as exc:
            raise ManifestError(str(path), [f"{path}: cannot parse as CSV: {exc}"]) from None
    if suffix in (".jsonl", ".ndjson"):
        bad = _check_utf8(path)
        if bad:
            raise ManifestError(str(path), [bad])
        problems = _check_jsonl_values(path)
        if problems:
            raise ManifestError(str(path), problems[:MAX_SHOWN_PROBLEMS], total=len(problems))
        try:
            return pl.read_ndjson(path, infer_schema_length=None), "jsonl"
        except pl.exceptions.PolarsError as exc:
            raise ManifestError(str(path), [f"{path}: cannot parse as JSON lines: {exc}"]) from None
    if suffix in (".parquet", ".pq"):
        try:
            return pl.read_parquet(path), "parquet"
        except Exception as exc:  # noqa: BLE001 - arrow raises many kinds
            raise ManifestError(str(path), [f"{path}: cannot read Parquet: {exc}"]) from None
    raise ManifestError(str(path), [f"{path}: unknown manifest format {suffix!r} (use .csv, .tsv, .jsonl or .parquet)"])


def _as_string(series: pl.Series) -> pl.Series:
    s = series.cast(pl.Utf8, strict=False)
    return s.str.strip_chars().replace("", None)


def read_manifest(
    path: str | os.PathLike[str],
    dataset: str | None = None,
    *,
    check_media: bool = True,
    fingerprint: bool = True,
    strict: bool = False,
) -> Manifest:
    """Read, validate and fingerprint a manifest.

    Raises ``ManifestError`` listing every problem (capped) with file, row and column.
    A missing media file marks its row (column ``missing``, the reason) unless
    ``strict``, where it is a problem like any other; more than half of the media
    rows missing is refused either way (one line: the paths point elsewhere).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise ManifestError(str(path), [f"{path}: manifest file not found"])
    raw, fmt = _read_table(path)
    name = path.name
    found: list[tuple[int, str]] = []

    def problem(i: int | None, col: str | None, what: str) -> None:
        where = name if i is None else f"{name} {_row_ref(fmt, i)}"
        found.append((-1 if i is None else i, f"{where}, column {col!r}: {what}" if col else f"{where}: {what}"))

    def problems() -> list[str]:  # in file order
        return [msg for _, msg in sorted(found, key=lambda t: t[0])]

    if "clip_id" not in raw.columns:
        problem(None, None, f"missing required column 'clip_id' (columns: {', '.join(raw.columns) or 'none'})")
    if not any(c in raw.columns for c in (*MEDIA_COLUMNS, "text")):
        problem(None, None, "needs at least one of the columns 'video', 'audio', 'text'")
    if found:
        raise ManifestError(str(path), problems())

    cols: dict[str, pl.Series] = {}
    for col in raw.columns:
        if col in STRING_COLUMNS:
            cols[col] = _as_string(raw[col])
        elif col in FLOAT_COLUMNS:
            text = _as_string(raw[col])
            values = text.cast(pl.Float64, strict=False)
            for i in (values.is_null() & text.is_not_null()).arg_true().to_list():
                problem(i, col, f"not a number: {text[i]!r}")
            cols[col] = values
        else:
            cols[col] = raw[col]
    df = pl.DataFrame(cols)

    ids = df["clip_id"]
    for i in ids.is_null().arg_true().to_list():
        problem(i, "clip_id", "empty clip_id")
    first_seen: dict[str, int] = {}
    for i, cid in enumerate(ids.to_list()):
        if cid is None:
            continue
        if cid in first_seen:
            problem(i, "clip_id", f"duplicate clip_id {cid!r} (first at {_row_ref(fmt, first_seen[cid])})")
        else:
            first_seen[cid] = i

    # Resolve media paths against the manifest's folder.
    missing: dict[int, str] = {}
    for col in MEDIA_COLUMNS:
        if col not in df.columns:
            continue
        resolved = []
        for i, p in enumerate(df[col].to_list()):
            if p is None:
                resolved.append(None)
                continue
            full = Path(os.path.expanduser(p))
            full = full if full.is_absolute() else path.parent / full
            why = _not_a_file(full, p) if check_media else None
            if why is not None:
                if strict:
                    problem(i, col, why)
                else:
                    missing.setdefault(i, (col, why))
            resolved.append(str(full))
        df = df.with_columns(pl.Series(col, resolved, dtype=pl.Utf8))
    if missing:
        with_media = df.select(pl.any_horizontal([pl.col(c).is_not_null() for c in MEDIA_COLUMNS if c in df.columns])
                               .alias("m"))["m"].sum()
        if len(missing) > MOST_MISSING * with_media:
            first = min(missing)
            raise MediaFolderError(str(path), (
                f"{path}: {len(missing)} of {with_media} rows' media files are missing, e.g. {name} "
                f"{_row_ref(fmt, first)}, column {missing[first][0]!r}: {missing[first][1]}; are the paths "
                f"relative to another folder than the manifest's ({path.parent})?"))
    df = df.with_columns(pl.Series("missing", [missing[i][1] if i in missing else None for i in range(df.height)],
                                   dtype=pl.Utf8))

    has_any = pl.lit(False)
    for col in (*MEDIA_COLUMNS, "text"):
        if col in df.columns:
            has_any = has_any | pl.col(col).is_not_null()
    for i in df.select(has_any.alias("ok"))["ok"].not_().arg_true().to_list():
        problem(i, None, "row has no video, audio or text")

    for col in ("start", "end"):
        if col in df.columns:
            for i in (df[col] < 0).fill_null(False).arg_true().to_list():
                problem(i, col, f"negative time {df[col][i]}")
    if "start" in df.columns and "end" in df.columns:
        for i in (df["start"] >= df["end"]).fill_null(False).arg_true().to_list():
            problem(i, "end", f"start ({df['start'][i]}) >= end ({df['end'][i]})")

    if found:
        raise ManifestError(str(path), problems()[:MAX_SHOWN_PROBLEMS], total=len(found))

    for col in (*MEDIA_COLUMNS, "text", "start", "end", "language", "label", "label_value", "split", "fold", "speaker"):
        if col not in df.columns:
            dtype = pl.Float64 if col in FLOAT_COLUMNS else pl.Utf8
            df = df.with_columns(pl.lit(None, dtype=dtype).alias(col))
    if fingerprint:
        df = add_keys(df)
    return Manifest(path=path, dataset=dataset or path.stem, df=df)


def _not_a_file(full: Path, given: str) -> str | None:
    """Why ``full`` is not a readable media file, or None when it is one."""
    where = f" (resolved to {full})" if str(full) != given else ""
    try:
        st = os.stat(full)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"symlink loop: {given}{where}"
        if exc.errno == errno.EACCES:
            return f"permission denied: {given}{where}"
        return f"file not found: {given}{where}"
    if not os.path.isfile(full):
        return f"not a file ({'a folder' if os.path.isdir(full) else 'not a regular file'}): {given}{where}"
    del st
    return None


# ----------------------------------------------------------------------------- fingerprints


def file_fingerprint(path: str) -> str:
    """Size, mtime and a hash of the first and last MiB: cheap, and changes when the file does."""
    st = os.stat(path)
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:".encode())
    with open(path, "rb") as f:
        h.update(f.read(FINGERPRINT_BYTES))
        if st.st_size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, st.st_size - FINGERPRINT_BYTES))
            h.update(f.read(FINGERPRINT_BYTES))
    return h.hexdigest()


def _media_fp(video: str | None, audio: str | None, start: float | None, end: float | None) -> str | None:
    if video is None and audio is None:
        return None
    h = hashlib.sha256()
    for p in (video, audio):
        # a missing file has a key of its own, replaced by the file's when it appears
        h.update((("missing:" + p if not os.path.isfile(p) else file_fingerprint(p)) if p else "-").encode())
    h.update(f"|{start!r}|{end!r}".encode())
    return h.hexdigest()[:16]


def add_keys(df: pl.DataFrame) -> pl.DataFrame:
    """Add ``media_fp``/``text_fp`` and the cache keys ``media_key``/``text_key``.

    A relabelled row keeps its keys; a changed media file or segment does not.
    """
    rows = df.select("video", "audio", "start", "end").iter_rows()
    with ThreadPoolExecutor(max_workers=8) as pool:
        media_fp = list(pool.map(lambda r: _media_fp(*r), rows))
    text_fp = [hashlib.sha256(t.encode()).hexdigest()[:16] if t is not None else None for t in df["text"].to_list()]
    ids = df["clip_id"].to_list()
    return df.with_columns(
        pl.Series("media_fp", media_fp, dtype=pl.Utf8),
        pl.Series("text_fp", text_fp, dtype=pl.Utf8),
        pl.Series("media_key", [f"{c}@{fp}" if fp else None for c, fp in zip(ids, media_fp)], dtype=pl.Utf8),
        pl.Series("text_key", [f"{c}@t{fp}" if fp else None for c, fp in zip(ids, text_fp)], dtype=pl.Utf8),
    )
