"""Writing features: one temporary part per task, renamed into place when complete.

Two writers never touch the same files: each task fills its own part folder
(``parts/.tmp-<name>-<token>``), writes ``PART.json`` (row counts and the
sha256 of every file) last, and renames the folder to ``parts/<name>``. A
crash leaves only a temporary folder, which readers ignore and ``gc`` removes.
``finalize`` rebuilds the index from the committed parts and writes
``COMPLETE.json`` last (naming the parts it indexed); it runs under the store's
lock, so any process may run it at any time. Whether a spec needs it is decided
by what is on disk (:func:`stale_reason`), never by whether a run computed something.

On an object store (no rename, no lock) a part goes under its final prefix
``parts/<name>~<token>`` and is committed by its ``PART.json``, written last;
``COMPLETE.json`` and the ledger are conditional puts (see ``finalize_feature``).
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import platform
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl
import zarr

from clmer_features import __version__
from clmer_features.errors import StoreError
from clmer_features.spec import FeatureSpec
from clmer_features.store import layout as L
from clmer_features.store.objpath import PreconditionFailed, StorePath, is_object

CHUNK_ROWS = 512  # inner chunk of a part's value array; the whole part is one shard
# Finalize merges runs of small parts (values under COMPACT_BELOW bytes each) into parts of about
# COMPACT_TARGET, where a run adds up to COMPACT_BELOW at least: a scan reads a few large files at
# the disk's sequential rate, where many small ones (one per extraction partition) read at about
# half of it (benchmarks/results/store_io.md); a small cache's few small parts are left as they are.
COMPACT_BELOW = 64 << 20
COMPACT_TARGET = 256 << 20
RETIRED_KEEP_S = 600.0  # merged-away parts stay readable this long for readers opened before the merge
_PART_INDEX_SCHEMA = {
    "clip_key": pl.Utf8,
    "clip_id": pl.Utf8,
    "row_start": pl.Int64,
    "row_end": pl.Int64,
    "item": pl.Int64,
    L.DIGEST: pl.UInt64,  # of the clip's rows as stored (little-endian, C order); null in format 1 parts
}


def _provenance() -> dict[str, Any]:
    return {
        "clmer_version": __version__,
        "host": platform.node(),
        "python": platform.python_version(),
        "zarr": zarr.__version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@dataclass
class FinalizeSummary:
    feature: str
    spec_id: str
    clips: int
    failed: int
    parts: int
    duplicates: int
    path: StorePath


@dataclass
class _Buffers:
    keys: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    times: list[np.ndarray | None] = field(default_factory=list)
    pooled: list[np.ndarray | None] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


def write_uncompressed_shard(
    path: Path, values: np.ndarray, chunk_rows: int, shard_rows: int, files: dict[str, dict[str, Any]] | None = None, rel: str = ""
) -> None:
    """Write a ``[rows, D]`` array as the one shard of a zarr v3 array whose codecs are
    ``sharding_indexed`` with inner ``bytes`` (little endian) and index ``bytes`` + ``crc32c``
    at the end, as the zarr v3 sharding spec lays it out (``sharded_array_meta``).

    zarr-python encodes inner chunks one by one through its async pipeline (about 400 MB/s
    here); the layout of uncompressed chunks is plain bytes, so one ``write`` does it at
    page-cache speed. Its size and xxh3-64 go into ``files[rel]`` (for PART.json) from memory.
    Tests read the result back through zarr itself.
    """
    import google_crc32c

    rows, dim = values.shape
    data = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    n_inner = shard_rows // chunk_rows
    n_used = -(-rows // chunk_rows)
    chunk_bytes = chunk_rows * dim * data.dtype.itemsize
    index = np.full((n_inner, 2), np.iinfo(np.uint64).max, dtype="<u8")
    index[:n_used, 0] = np.arange(n_used, dtype=np.uint64) * chunk_bytes
    index[:n_used, 1] = chunk_bytes
    pad = bytes((n_used * chunk_rows - rows) * dim * data.dtype.itemsize)  # the last chunk is stored whole: zarr's fill value, 0
    raw_index = index.tobytes()
    tail = pad + raw_index + np.array([google_crc32c.value(raw_index)], dtype="<u4").tobytes()
    body = memoryview(data.reshape(-1).view(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(body)
        f.write(tail)
    if files is not None:
        h = L.xxhash.xxh3_64(body)
        h.update(tail)
        files[rel] = {"size": len(body) + len(tail), L.DIGEST: h.hexdigest()}


def sharded_array_meta(shape: tuple[int, int], dtype: np.dtype, chunk_rows: int, shard_rows: int, attrs: dict[str, Any]) -> dict[str, Any]:
    """The ``zarr.json`` of a ``[rows, D]`` array stored as one uncompressed shard of inner
    chunks of ``chunk_rows`` rows (what ``write_uncompressed_shard`` writes)."""
    return _array_meta(
        list(shape),
        dtype,
        [shard_rows, shape[1]],
        [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [chunk_rows, shape[1]],
                    "codecs": [_LITTLE],
                    "index_codecs": [_LITTLE, {"name": "crc32c"}],
                    "index_location": "end",
                },
            }
        ],
        attrs,
    )


_LITTLE = {"name": "bytes", "configuration": {"endian": "little"}}


def _array_meta(shape: list[int], dtype: np.dtype, chunk_shape: list[int], codecs: list[dict], attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        "shape": shape,
        "data_type": np.dtype(dtype).name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk_shape}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0,
        "codecs": codecs,
        "attributes": attrs,
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def _write_file(path: Path, data: bytes, files: dict[str, dict[str, Any]], rel: str) -> None:
    """A file of a part being written (in its temporary folder: no fsync, no rename;
    PART.json, written last, is synced and the folder renamed into place after it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    files[rel] = L.file_entry(data)


def _write_node(folder: Path, meta: dict[str, Any], files: dict[str, dict[str, Any]]) -> None:
    rel = (folder.name + "/" if meta["node_type"] == "array" else "") + L.ZARR_JSON
    _write_file(folder / L.ZARR_JSON, (json.dumps(meta, indent=2) + "\n").encode(), files, rel)


def _write_checked_array(part: Path, name: str, data: np.ndarray, files: dict[str, dict[str, Any]]) -> None:
    """A small float32 array as one chunk with the ``bytes`` and ``crc32c`` codecs: zarr
    checks it on every read."""
    import google_crc32c

    raw = np.ascontiguousarray(data, dtype="<f4").tobytes()
    meta = _array_meta(list(data.shape), np.dtype("float32"), list(data.shape), [_LITTLE, {"name": "crc32c"}], {})
    _write_node(part / name, meta, files)
    key = "/".join(["c"] + ["0"] * data.ndim)
    _write_file(part / name / key, raw + np.array([google_crc32c.value(raw)], dtype="<u4").tobytes(), files, f"{name}/{key}")


def row_checksums(values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, int]:
    """Checksums (``layout.digest``) of each clip's rows ``values[offsets[i]:offsets[i+1]]``
    and of all rows: what readers check on every read (a read of some clips checks
    their own bytes, a read of a whole part the part's)."""
    import xxhash

    sums = np.zeros(len(offsets) - 1, dtype=np.uint64)
    whole = xxhash.xxh3_64()
    for i, (lo, hi) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
        block = values[lo:hi]
        sums[i] = L.digest(block)
        whole.update(block)  # still in cache
    return sums, whole.intdigest()


def _nonfinite_rows(values: np.ndarray) -> np.ndarray | None:
    """Rows holding NaN or inf, or None when there are none (float16 by its exponent bits: a
    masked max, 5 GB/s here against 0.6 GB/s for np.isfinite, in blocks of about 4 MB so that
    the temporary stays in cache: over a 230 MB part at once it ran at 0.4 GB/s)."""
    step = max(1, (4 << 20) // max(1, values.shape[1] * values.itemsize)) if values.ndim == 2 else len(values)
    for lo in range(0, len(values), step):
        block = values[lo:lo + step]
        if values.dtype == np.float16:
            exponent = block.view(np.uint16) & 0x7C00
            if exponent.size == 0 or exponent.max() != 0x7C00:
                continue
        elif np.isfinite(block).all():
            continue
        bad = (values.view(np.uint16) & 0x7C00 == 0x7C00) if values.dtype == np.float16 else ~np.isfinite(values)
        return bad.any(axis=1)
    return None


class PartWriter:
    """Collects one task's clips in memory and writes them as one part on commit."""

    def __init__(self, fw: "FeatureWriter", name: str):
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid part name {name!r}")
        self.fw = fw
        self.name = name
        self.dtype = np.dtype(fw.spec.params.get("dtype", "float16"))
        self._b = _Buffers()
        self._seen: set[str] = set()
        self._rows: np.ndarray | None = None  # all rows in one array already, in clip order (a merge)

    def _check_new(self, clip_key: str) -> None:
        if clip_key in self._seen:
            raise StoreError(f"part {self.name}: clip key {clip_key!r} added twice")
        self._seen.add(clip_key)

    def add(
        self,
        clip_key: str,
        clip_id: str,
        values: np.ndarray | None,
        times: np.ndarray | None = None,
        pooled: np.ndarray | None = None,
    ) -> None:
        """Add one clip's rows ``[T, D]`` (and timestamps ``[T]``, pooled vector ``[D]``)."""
        self._check_new(clip_key)
        v = np.zeros((0, 0), self.dtype) if values is None else np.asarray(values)
        if v.ndim == 1:
            v = v[None, :]
        if v.ndim != 2:
            raise StoreError(f"{self.fw.spec.feature}: clip {clip_id}: values must be [T, D], got shape {v.shape}")
        if times is not None:
            times = np.asarray(times, dtype=np.float32).reshape(-1)
            if times.shape[0] != v.shape[0]:
                raise StoreError(f"{self.fw.spec.feature}: clip {clip_id}: {v.shape[0]} rows but {times.shape[0]} timestamps")
        b = self._b
        b.keys.append(clip_key)
        b.ids.append(clip_id)
        b.values.append(v)
        b.times.append(times)
        b.pooled.append(None if pooled is None else np.asarray(pooled).reshape(-1))

    def add_record(self, clip_key: str, clip_id: str, record: dict[str, Any], values: np.ndarray | None = None,
                   times: np.ndarray | None = None) -> None:
        """Add a table row (e.g. a transcript) for a clip, with its rows if any; the clip counts as done."""
        self.add(clip_key, clip_id, values, times=times)
        self._b.records.append({"clip_key": clip_key, "clip_id": clip_id, **record})

    def fail(self, clip_key: str, clip_id: str, stage: str, error: str, message: str, kind: str = "error") -> None:
        """Record that a clip produced nothing: ``kind`` 'error' (broken), 'absent' (no such
        modality) or 'missing' (the manifest's media file is not there)."""
        if kind not in ("error", "absent", "missing"):
            raise ValueError(f"kind must be 'error', 'absent' or 'missing', not {kind!r}")
        self._check_new(clip_key)
        self._b.failures.append(
            {"clip_id": clip_id, "clip_key": clip_key, "stage": stage, "error": error, "message": message[:2000], "kind": kind}
        )

    def __len__(self) -> int:
        return len(self._seen)

    # ------------------------------------------------------------------ commit
    def commit(self) -> StorePath:
        if is_object(self.fw.parts_dir):
            return self._commit_object()
        final = self.fw.parts_dir / self.name
        if final.exists():
            # The same partition was already committed (a retried or duplicated task): keep the first.
            return final
        tmp = self.fw.parts_dir / f"{L.TMP_PREFIX}{self.name}-{uuid.uuid4().hex[:8]}"
        try:
            self._write(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if final.exists():  # lost a race with a twin task: its part is as good as ours
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _commit_object(self) -> StorePath:
        """No rename on an object store: the part is written under its final prefix
        ``parts/<name>~<token>`` (a token per attempt, so a twin task never overwrites a
        key of ours) and becomes visible when its marker ``PART.json`` is written last,
        with a conditional create. A crash leaves an unmarked prefix: readers ignore it,
        ``gc`` removes it once older than its bound. Twins that both commit hold the same
        clips; finalize indexes each clip once."""
        import tempfile

        existing = self.fw.find_part(self.name)
        if existing is not None:  # a retried or duplicated task: keep the first
            return existing
        final = self.fw.parts_dir / f"{self.name}{L.TWIN_SEP}{uuid.uuid4().hex[:12]}"
        with tempfile.TemporaryDirectory(prefix="clmer-part-") as tmpdir:
            tmp = Path(tmpdir) / self.name
            self._write(tmp)
            final.upload_tree(tmp, last=L.PART_FILE)
            final_marker = (tmp / L.PART_FILE).read_bytes()
        (final / L.PART_FILE).write_bytes(final_marker, create=True)
        return final

    def _write(self, tmp: Path) -> None:
        """Write the part's files into ``tmp``; ``PART.json`` last (the only file synced: the
        folder becomes visible by its rename, after it). Array metadata and chunks are
        written here directly, in the zarr v3 layout (zarr-python's group and array
        creation cost about 30 ms a part, a tenth of the time of writing 10 MB)."""
        b = self._b
        dims = {v.shape[1] for v in b.values if v.shape[0] > 0}
        if len(dims) > 1:
            raise StoreError(f"{self.fw.spec.feature}: part {self.name}: clips have different widths {sorted(dims)}")
        dim = dims.pop() if dims else 0
        lengths = np.array([v.shape[0] for v in b.values], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        rows = int(offsets[-1])
        n = len(b.keys)
        summary = {"part": self.name, "clips": n, "rows": rows, "dim": dim, "dtype": self.dtype.name, "failed": len(b.failures)}
        tmp.mkdir()
        files: dict[str, dict[str, Any]] = {}  # size and CRC-32 of what is written from memory
        _write_node(tmp, {"zarr_format": 3, "node_type": "group", "attributes": {**summary, **L.format_stamp()}}, files)
        sums = np.full(n, L.digest(b""), dtype=np.uint64)  # clips without rows
        if rows:
            values = self._rows
            if values is None or values.shape != (rows, dim) or values.dtype != self.dtype:
                values = np.empty((rows, dim), dtype=self.dtype)  # one pass: cast while copying
                for v, lo, hi in zip(b.values, offsets[:-1], offsets[1:]):
                    if hi > lo:
                        values[lo:hi] = v
            bad = _nonfinite_rows(values)
            if bad is not None:
                clip = int(np.searchsorted(offsets, int(np.argmax(bad)), side="right")) - 1
                raise StoreError(f"{self.fw.spec.feature}: clip {b.ids[clip]}: values contain NaN or inf")
            chunk = min(CHUNK_ROWS, rows)
            shard = -(-rows // chunk) * chunk
            sums, whole = row_checksums(values, offsets)
            attrs = {L.DIGEST: f"{whole:016x}", "rows_of_clips": f"index.parquet: row_start, row_end, {L.DIGEST}"}
            _write_node(tmp / "values", sharded_array_meta((rows, dim), self.dtype, chunk, shard, attrs), files)
            write_uncompressed_shard(tmp / "values" / "c" / "0" / "0", values, chunk, shard, files, "values/c/0/0")
            if any(t is not None for t in b.times):
                times = np.concatenate(
                    [t if t is not None else np.full(len(v), np.nan, np.float32) for t, v in zip(b.times, b.values)]
                )
                _write_checked_array(tmp, "times", times.astype(np.float32), files)
        if any(p is not None for p in b.pooled):
            pdims = {p.shape[0] for p in b.pooled if p is not None}
            if len(pdims) > 1:
                raise StoreError(f"{self.fw.spec.feature}: part {self.name}: pooled vectors of different widths {sorted(pdims)}")
            pdim = pdims.pop()
            pooled = np.stack([p if p is not None else np.full(pdim, np.nan) for p in b.pooled]).astype(np.float32)
            _write_checked_array(tmp, "pooled", pooled, files)
        if n:
            pl.DataFrame(
                {"clip_key": b.keys, "clip_id": b.ids, "row_start": offsets[:-1], "row_end": offsets[1:], "item": np.arange(n), L.DIGEST: sums},
                schema=_PART_INDEX_SCHEMA,
            ).write_parquet(tmp / L.INDEX_FILE)
        if b.records:
            pl.DataFrame(b.records, infer_schema_length=None).write_parquet(tmp / L.RECORDS_FILE)
        if b.failures:
            pl.DataFrame(b.failures, schema={k: pl.Utf8 for k in b.failures[0]}).write_parquet(tmp / L.FAILURES_FILE)
        meta = {
            **summary,
            "feature": self.fw.spec.feature,
            "spec_id": self.fw.spec.spec_id,
            "files": L.file_checksums(tmp, known=files),
            **_provenance(),
            **L.format_stamp(),
        }
        L.atomic_write_json(tmp / L.PART_FILE, meta)


class FeatureWriter:
    """Writes parts of one feature spec and finalizes its index."""

    def __init__(self, store_root: StorePath, spec: FeatureSpec, input: str = "media", provenance: dict[str, Any] | None = None):
        L.key_columns(input)  # raises for an unknown key input
        self.spec = spec
        self.root = store_root
        self.dir = L.feature_dir(store_root, spec.feature, spec.spec_id)
        self.parts_dir = self.dir / L.PARTS_DIR
        self.input = input
        self._ensure_group(provenance or {})

    def _ensure_group(self, extra: dict[str, Any]) -> None:
        """Create the spec's group once (attrs: spec, input, provenance); later writers
        only check it holds the same spec, and add their provenance entries."""
        L.ensure_hierarchy(self.root, self.spec.feature)
        if (self.dir / "zarr.json").exists():
            attrs = L.node_attrs(self.dir)
            L.check_format(attrs, self.dir)  # never add parts to a spec a newer clmer wrote
            stored = FeatureSpec.from_dict(attrs["spec"])
            if stored.spec_id != self.spec.spec_id:
                raise StoreError(f"{self.dir}: holds spec {stored.describe()}, not {self.spec.describe()}")
            if any(attrs.get("provenance", {}).get(k) != v for k, v in extra.items()):
                L.update_node_attrs(self.dir, {"provenance": {**attrs.get("provenance", {}), **extra}})
        elif is_object(self.dir):  # the spec is visible once its zarr.json is there: written last
            L.write_group(self.dir / L.PARTS_DIR, {})
            L.write_group(
                self.dir,
                {"spec": self.spec.to_dict(), "input": self.input, "provenance": {**_provenance(), **extra}, **L.format_stamp()},
            )
        else:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.dir.parent / f"{L.TMP_PREFIX}{self.spec.spec_id}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            L.write_group(
                tmp,
                {"spec": self.spec.to_dict(), "input": self.input, "provenance": {**_provenance(), **extra}, **L.format_stamp()},
            )
            L.write_group(tmp / L.PARTS_DIR, {})
            try:
                os.rename(tmp, self.dir)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if not (self.dir / "zarr.json").exists():
                    raise
        L.ensure_group(self.parts_dir, {})  # a format 1 spec gets its parts group when resumed

    def committed_parts(self) -> list[StorePath]:
        return L.committed_parts(self.dir)

    def find_part(self, name: str) -> StorePath | None:
        """The committed part of partition ``name`` (a retried task finds its first attempt's), or None."""
        if not is_object(self.parts_dir):
            path = self.parts_dir / name
            return path if path.is_dir() else None
        import obstore

        # keys sort as parts/<name>~<token>/<file>: list from just before them, one page
        prefix = f"{self.parts_dir.key}/{name}{L.TWIN_SEP}"
        bucket = self.parts_dir.bucket
        for batch in obstore.list(bucket.store, self.parts_dir.key, offset=prefix[:-1], chunk_size=200):
            bucket.count()
            for o in batch:
                path = o["path"]
                if not path.startswith(prefix):
                    return None
                if path.endswith("/" + L.PART_FILE):
                    return self.parts_dir / path[len(self.parts_dir.key) + 1:].split("/", 1)[0]
        return None

    def done_keys(self, include_failed: bool = True) -> set[str]:
        """Clip keys already in committed parts (successes, and failures unless told otherwise)."""
        done: set[str] = set()
        for part in self.committed_parts():
            files = L.read_json(part / L.PART_FILE).get("files", {}) if is_object(part) else None
            for name, wanted in ((L.INDEX_FILE, True), (L.FAILURES_FILE, include_failed)):
                have = name in files if files is not None else (part / name).exists()
                if wanted and have:
                    done.update(L.read_parquet(part / name, columns=["clip_key"])["clip_key"].to_list())
        return done

    def part(self, name: str) -> "_PartContext":
        return _PartContext(PartWriter(self, name))

    def finalize(self) -> FinalizeSummary:
        return finalize_feature(self.root, self.spec.feature, self.spec.spec_id)


class _PartContext:
    def __init__(self, writer: PartWriter):
        self.writer = writer

    def __enter__(self) -> PartWriter:
        return self.writer

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.writer.commit()


_INDEX_COLUMNS = ("clip_key", "clip_id", "part", "row_start", "row_end", "item", L.DIGEST)


def _part_index(part: StorePath, meta: dict[str, Any] | None = None) -> pl.DataFrame:
    """One row per successful clip in a part: key, id, part, row range, item (pooled row),
    checksum of its rows (null for a format 1 part). Refuses a part of a newer store format."""
    meta = L.read_json(part / L.PART_FILE) if meta is None else meta
    L.check_format(meta, part / L.PART_FILE)
    path = part / L.INDEX_FILE
    df = L.read_parquet(path) if _has_file(part, meta, L.INDEX_FILE) else pl.DataFrame(schema=_PART_INDEX_SCHEMA)
    if L.DIGEST not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.UInt64).alias(L.DIGEST))
    return df.with_columns(pl.lit(part.name, dtype=pl.Utf8).alias("part")).select(_INDEX_COLUMNS)


def _has_file(part: StorePath, meta: dict[str, Any], name: str) -> bool:
    """Whether a committed part holds ``name`` (its PART.json lists its files: no request on an object store)."""
    return name in meta.get("files", {}) if is_object(part) else (part / name).exists()


def stale_reason(fdir: StorePath) -> str | None:
    """Why a spec's index does not describe the parts on disk, or None when it does.

    Finalize is driven by this, not by whether the run computed anything: a crash
    after a part was committed but before the index and ``COMPLETE.json`` were
    rewritten leaves parts that no reader sees, and the next run must index them.
    """
    complete_path = fdir / L.COMPLETE_FILE
    if not complete_path.exists():
        return f"not finalized (no {L.COMPLETE_FILE})"
    try:
        complete = L.read_json(complete_path)
    except ValueError:
        return f"{L.COMPLETE_FILE} is unreadable"
    on_disk = {p.name for p in L.committed_parts(fdir)}
    recorded = complete.get("part_names")
    if recorded is None:  # written before part names were recorded: compare the counts
        if complete.get("parts") != len(on_disk):
            return f"{len(on_disk)} committed part(s), {complete.get('parts')} in the index"
    else:
        new, gone = on_disk - set(recorded), set(recorded) - on_disk
        if new or gone:
            return (f"{len(new)} committed part(s) not in the index" if new else "") + (
                ", " if new and gone else "") + (f"{len(gone)} indexed part(s) gone from disk" if gone else "")
    index = fdir / L.INDEX_FILE
    if not index.exists():
        return f"{L.INDEX_FILE} is missing"
    if L.sha256_file(index) != complete.get("index_sha256"):
        return f"{L.INDEX_FILE} does not match {L.COMPLETE_FILE}"
    if L.format_of(complete) < L.STORE_FORMAT:
        return older_format_reason(L.format_of(complete))
    return None


def older_format_reason(found: int) -> str:
    """A spec finalized by an older clmer: readable as it is; a rerun of extract refinalizes it
    (index, consolidated zarr metadata, format stamp) without recomputing anything."""
    return f"finalized in store format {found}: a rerun of extract rewrites its metadata in format {L.STORE_FORMAT} (nothing is recomputed)"


@contextmanager
def store_lock(store_root: StorePath) -> Iterator[None]:
    """Exclusive lock on a store's shared files (index rebuilds, the ledger): finalizes of
    several processes, or of two features at once, must not interleave their
    read-modify-write of ``ledger.parquet``. An object store has no lock: there the
    completion record and the ledger are written with conditional puts instead."""
    if is_object(store_root):
        yield
        return
    store_root.mkdir(parents=True, exist_ok=True)
    with open(store_root / L.LOCK_FILE, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


_FINALIZE_TRIES = 8


def finalize_feature(store_root: StorePath, feature: str, spec_id: str) -> FinalizeSummary:
    """Rebuild index, records and failures from the committed parts; write COMPLETE.json last.

    On an object store finalizes of several clients may run at once: each writes its
    ``COMPLETE.json`` only if it is still the one it read first (``If-Match``, or
    ``If-None-Match`` for the first), and one that loses starts over from the parts then
    on the store, so the last completion record describes the index beside it."""
    if not is_object(store_root):
        with store_lock(store_root):
            return _finalize(store_root, feature, spec_id)
    for _ in range(_FINALIZE_TRIES):
        try:
            return _finalize(store_root, feature, spec_id)
        except PreconditionFailed:
            time.sleep(0.05)
    raise StoreError(f"{L.feature_dir(store_root, feature, spec_id)}: {_FINALIZE_TRIES} finalizes in a row lost "
                     "the race for COMPLETE.json to other clients; rerun extract to finalize")


def _values_bytes(meta: dict[str, Any]) -> int:
    entry = meta.get("files", {}).get("values/c/0/0")
    return int(entry["size"]) if entry else 0


def _compactable(part: StorePath, meta: dict[str, Any]) -> bool:
    """A local part of this store format whose values are small enough to merge."""
    return not is_object(part) and L.format_of(meta) == L.STORE_FORMAT and _values_bytes(meta) < COMPACT_BELOW


def compact_groups(parts: list, metas: dict[str, dict[str, Any]]) -> list[list]:
    """Runs of adjacent small parts (in index order) of at most about ``COMPACT_TARGET`` bytes of
    values, two parts or more and ``COMPACT_BELOW`` bytes or more each: what finalize merges
    (so a merged part is never small, and is never merged again)."""
    groups: list[list] = []
    cur: list = []
    size = 0
    for p in parts:
        meta = metas[p.name]
        if not _compactable(p, meta):
            groups.append(cur)
            cur, size = [], 0
            continue
        n = _values_bytes(meta)
        if cur and size + n > COMPACT_TARGET:
            groups.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += n
    groups.append(cur)
    return [g for g in groups if len(g) > 1 and sum(_values_bytes(metas[p.name]) for p in g) >= COMPACT_BELOW]


def _read_values_checked(part: Path, out: np.ndarray | None = None) -> np.ndarray | None:
    """A part's values (into ``out`` when given), checked against the part's xxh3-64 of all its
    rows; None when it has none. Raises CorruptShard or StoreError."""
    from clmer_features.store.rawread import CorruptShard, RawRows

    if not (part / "values" / L.ZARR_JSON).exists():
        return None
    raw = RawRows.open(part / "values")
    if raw is None:
        raise StoreError(f"{part}/values: not in the layout the store writes")
    try:
        values = raw.read(0, raw.shape[0], out)
    finally:
        raw.close()
    whole = raw.attrs.get(L.DIGEST)
    if whole is None or L.xxhash.xxh3_64_intdigest(values) != int(whole, 16):
        raise CorruptShard(raw.path, "the part's rows do not match their checksum")
    return values


def _read_small_checked(part: Path, name: str) -> np.ndarray | None:
    """``times`` or ``pooled`` of a part, checked by its crc32c (None when the part has none)."""
    from clmer_features.store.rawread import read_checked_chunk

    path = part / name / L.ZARR_JSON
    return read_checked_chunk(part, name, L.read_json(path)) if path.exists() else None


def _merge_parts(fw: "FeatureWriter", group: list, metas: dict[str, dict[str, Any]]) -> StorePath:
    """One part holding every clip of ``group`` (the first part's copy of a clip twice on disk),
    their records and failures, written and committed like any part; the group is untouched.
    Its name comes from its clips (``m-<hash>``), so the same parts merge to the same part.
    Each part's values are read checked straight into the merged array (one copy), unless a
    clip is twice in the group (after a crash), when the kept clips are copied one by one."""
    b = _Buffers()
    dtype = np.dtype(fw.spec.params.get("dtype", "float16"))
    indexes = [L.read_parquet(p / L.INDEX_FILE) if _has_file(p, metas[p.name], L.INDEX_FILE)
               else pl.DataFrame(schema=_PART_INDEX_SCHEMA) for p in group]
    keys = pl.concat([i.select("clip_key") for i in indexes])["clip_key"]
    whole_parts = keys.n_unique() == len(keys)  # no clip twice: every part's rows go in whole
    sizes = [int(i["row_end"].max() or 0) if i.height else 0 for i in indexes]
    dims = {int(metas[p.name].get("dim") or 0) for p, n in zip(group, sizes) if n}
    merged = np.empty((sum(sizes), dims.pop()), dtype) if whole_parts and len(dims) == 1 else None
    base = 0
    seen: set[str] = set()
    fail_rows: list[dict[str, Any]] = []
    for p, idx, n in zip(group, indexes, sizes):
        meta = metas[p.name]
        values = _read_values_checked(p, merged[base:base + n] if merged is not None and n else None)
        times, pooled = _read_small_checked(p, "times"), _read_small_checked(p, "pooled")
        recs = ({r["clip_key"]: r for r in L.read_parquet(p / L.RECORDS_FILE).to_dicts()}
                if _has_file(p, meta, L.RECORDS_FILE) else {})
        for key, cid, lo, hi, item in idx.select("clip_key", "clip_id", "row_start", "row_end", "item").iter_rows():
            if key in seen:
                continue
            seen.add(key)
            b.keys.append(key)
            b.ids.append(cid)
            b.values.append(values[lo:hi] if values is not None else np.zeros((0, 0), dtype))
            b.times.append(times[lo:hi] if times is not None else None)
            b.pooled.append(pooled[item] if pooled is not None else None)
            if key in recs:
                b.records.append(recs[key])
        if _has_file(p, meta, L.FAILURES_FILE):
            fail_rows.extend(L.read_parquet(p / L.FAILURES_FILE).to_dicts())
        base += n
    b.failures = [f for f in fail_rows if f["clip_key"] not in seen]  # every attempt kept: finalize counts them
    everything = seen | {f["clip_key"] for f in b.failures}
    pw = PartWriter(fw, part_name(sorted(everything), prefix="m"))
    pw._b, pw._seen, pw._rows = b, everything, merged
    return pw.commit()


def retired_name(part: str) -> str:
    """Where finalize moves a merged-away part: a temporary name (never a committed part, swept by
    ``gc``); readers opened before the merge find it there."""
    return f"{L.RETIRED_PREFIX}{part}-{time.time_ns():x}"


def _sweep_retired(fdir: Path, older_than_s: float = RETIRED_KEEP_S) -> None:
    now = time.time()
    for old in (fdir / L.PARTS_DIR).glob(f"{L.RETIRED_PREFIX}*"):
        if now - old.stat().st_mtime >= older_than_s:
            shutil.rmtree(old, ignore_errors=True)


def compact(store_root: StorePath, fdir: Path, parts: list, metas: dict[str, dict[str, Any]]) -> list:
    """Merge the runs of small parts (:func:`compact_groups`) into one part each, then move the
    merged-away parts aside (:func:`retired_name`); returns the committed parts now. A group
    with a damaged part is left as it is (``verify`` names it). A crash leaves a merged part and
    some of its sources both committed: finalize indexes each clip once, the next one merges
    them again. Local stores only."""
    if is_object(fdir):
        return parts
    _sweep_retired(fdir)
    groups = compact_groups(parts, metas)
    if not groups:
        return parts
    from clmer_features.store.rawread import CorruptShard

    attrs = L.node_attrs(fdir)
    fw = FeatureWriter(store_root, FeatureSpec.from_dict(attrs["spec"]), attrs.get("input", "media"))
    for group in groups:
        try:
            merged = _merge_parts(fw, group, metas)
        except (CorruptShard, StoreError, OSError, ValueError):
            continue
        for p in group:
            if p.name == merged.name:  # (after a crash: a merged part, then its sources again)
                continue
            gone = p.parent / retired_name(p.name)
            os.rename(p, gone)
            os.utime(gone)  # its age for the sweep counts from now
    return L.committed_parts(fdir)


def _finalize(store_root: StorePath, feature: str, spec_id: str) -> FinalizeSummary:
    fdir = L.feature_dir(store_root, feature, spec_id)
    complete_tag: str | None = None
    if is_object(fdir):
        _, complete_tag = (fdir / L.COMPLETE_FILE).read_with_etag()
    parts = L.committed_parts(fdir)
    metas = _part_metas(parts)
    if not is_object(fdir):
        parts = compact(store_root, fdir, parts, metas)
        metas = _part_metas(parts, known=metas)

    empty = pl.DataFrame(schema={**_PART_INDEX_SCHEMA, "part": pl.Utf8}).select(_INDEX_COLUMNS)
    index = pl.concat([empty, *(_part_index(p, metas[p.name]) for p in parts)], how="vertical")
    before = index.height
    index = index.unique(subset="clip_key", keep="first", maintain_order=True)
    duplicates = before - index.height

    failures = [L.read_parquet(p / L.FAILURES_FILE).with_columns(pl.lit(p.name).alias("part"))
                for p in parts if _has_file(p, metas[p.name], L.FAILURES_FILE)]
    fails = pl.concat(failures, how="diagonal_relaxed") if failures else L.empty_ledger().drop("feature", "spec_id", "attempt")
    if fails.height:
        fails = (
            fails.with_columns(pl.int_range(1, pl.len() + 1).over("clip_key").cast(pl.Int64).alias("attempt"))
            .filter(~pl.col("clip_key").is_in(index["clip_key"].implode()))
            .unique(subset="clip_key", keep="last", maintain_order=True)
        )
    else:
        fails = fails.with_columns(pl.lit(None, dtype=pl.Int64).alias("attempt"))
    fails = fails.with_columns(pl.lit(feature).alias("feature"), pl.lit(spec_id).alias("spec_id")).select(list(L.LEDGER_SCHEMA)).cast(L.LEDGER_SCHEMA)

    records = [L.read_parquet(p / L.RECORDS_FILE) for p in parts if _has_file(p, metas[p.name], L.RECORDS_FILE)]
    if records:
        rec = pl.concat(records, how="diagonal_relaxed").unique(subset="clip_key", keep="first", maintain_order=True)
        L.atomic_write_parquet(fdir / L.RECORDS_FILE, rec)

    L.atomic_write_parquet(fdir / L.INDEX_FILE, index)
    L.atomic_write_parquet(fdir / L.FAILURES_FILE, fails)
    _merge_ledger(store_root, feature, spec_id, fails)
    L.consolidate_spec(fdir, parts)
    complete = {
        "feature": feature,
        "spec_id": spec_id,
        "clips": index.height,
        "failed": fails.height,
        "parts": len(parts),
        "part_names": [p.name for p in parts],
        "index_sha256": L.sha256_file(fdir / L.INDEX_FILE),
        "finalized_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "finalized_ns": time.time_ns(),
        **L.format_stamp(),
    }
    if is_object(fdir):  # only over the record this finalize started from (PreconditionFailed: start over)
        data = (json.dumps(complete, indent=2, sort_keys=True) + "\n").encode()
        (fdir / L.COMPLETE_FILE).write_bytes(data, create=complete_tag is None, if_match=complete_tag)
    else:
        L.atomic_write_json(fdir / L.COMPLETE_FILE, complete)
    return FinalizeSummary(feature, spec_id, index.height, fails.height, len(parts), duplicates, fdir)


def _part_metas(parts: list, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each part's PART.json (taken from ``known`` where it holds the part: a committed part never changes)."""
    metas: dict[str, Any] = {}
    for p in parts:
        if known and p.name in known:
            metas[p.name] = known[p.name]
            continue
        if not is_object(p) and not (p / L.PART_FILE).exists():  # (an object-store part is committed by it)
            raise StoreError(f"{p}: part has no {L.PART_FILE}; it was not written by clmer (run `clmer-features verify`)")
        metas[p.name] = L.read_json(p / L.PART_FILE)
    return metas


def _merge_ledger(store_root: StorePath, feature: str, spec_id: str, fails: pl.DataFrame) -> None:
    def merge(old: pl.DataFrame) -> pl.DataFrame:
        keep = old.filter(~((pl.col("feature") == feature) & (pl.col("spec_id") == spec_id)))
        return pl.concat([keep.cast(L.LEDGER_SCHEMA), fails], how="vertical")

    update_ledger(store_root, merge)


def update_ledger(store_root: StorePath, change: Any) -> None:
    """Rewrite the store's ledger as ``change(old ledger)``: under the store's lock on a local
    disk (the caller holds it), with a conditional put retried on an object store (two
    clients finalizing different features never lose each other's entries)."""
    path = store_root / L.LEDGER_FILE
    if not is_object(path):
        old = pl.read_parquet(path) if path.exists() else L.empty_ledger()
        L.atomic_write_parquet(path, change(old))
        return
    for _ in range(_FINALIZE_TRIES * 4):
        data, tag = path.read_with_etag()
        old = pl.read_parquet(io.BytesIO(data)) if data is not None else L.empty_ledger()
        try:
            path.write_bytes(L.parquet_bytes(change(old)), create=tag is None, if_match=tag)
            return
        except PreconditionFailed:
            time.sleep(0.02)
    raise StoreError(f"{path}: other clients kept rewriting the ledger; rerun to finalize")


def part_name(clip_keys: list[str], prefix: str = "p") -> str:
    """A deterministic part name for a partition: the same clips give the same name,
    so a retried task lands on the part its first attempt may already have committed."""
    import hashlib

    h = hashlib.sha256("\n".join(sorted(clip_keys)).encode()).hexdigest()[:16]
    return f"{prefix}-{h}"
