"""Where things live in a store, and the small file operations every layer shares.

```
<cache>/<dataset>/                    zarr v3 group; attrs: store_format, written_by
  clips.parquet                       manifest snapshot (clip_id, keys, fingerprints, segment, labels)
  ledger.parquet                      failures of every feature (merged by finalize)
  .lock                               flock()ed by finalize: index and ledger rewrites never interleave
  leases/                             partition leases of running extracts (see store/lease.py)
  features/                           zarr v3 group
  features/<feature>/                 zarr v3 group; attrs: feature
  features/<feature>/<spec_id>/       zarr v3 group; attrs: spec, input, provenance, store_format; finalize
                                      consolidates the metadata of every committed part into its zarr.json
    parts/                            zarr v3 group
    parts/<part>/                     zarr v3 group, one writer's clips: values [rows, D] (one uncompressed shard),
                                      times [rows] and pooled [n, D'] (crc32c codec), index.parquet (clip_key,
                                      clip_id, row range, xxh3_64 of the clip's rows), PART.json (size and xxh3-64 of
                                      every file; CRC-32 in format 1) written last, then the folder is renamed
    parts/m-<token>/                  a part finalize merged from a run of small ones (writer.compact): same
                                      layout, checksums computed anew from the values read checked
    parts/.tmp-<part>-<token>/        a part being written (or abandoned by a crash)
    parts/.tmp-retired-<part>-<ns>/   a part merged away, kept a while for readers opened before the merge
    parts/<part>~<token>/             on an object store (no rename): a part written under its final prefix,
                                      committed once its PART.json (written last) is there
    index.parquet                     clip_key -> part, rows (rebuilt by finalize from the parts' own index.parquet)
    records.parquet                   table outputs (e.g. transcripts), merged by finalize
    failures.parquet                  this spec's failures, merged by finalize
    COMPLETE.json                     written last by finalize (part names, index digest, store_format,
                                      written_by); readers refuse a feature without it
```

Store formats (``STORE_FORMAT``; a reader refuses a store, feature or part of a newer one):
1. (no ``store_format`` written) the layout above without the zarr groups above the
   spec, without the ``parts`` group, consolidated metadata or any per-clip checksum;
   PART.json records CRC-32s.
2. every level is a zarr v3 node; an xxh3-64 checksum of each clip's values rows in
   the index (``xxh3_64``) and of each part's whole values in its ``values``
   attributes, crc32c codec on ``times`` and ``pooled``; PART.json records xxh3-64s.
Format 1 stores keep reading and resuming: new parts are format 2, old ones stay.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Iterator

import polars as pl
import xxhash

from clmer_features import __version__
from clmer_features.errors import StoreError
from clmer_features.store.objpath import ObjPath, StorePath, is_object

STORE_FORMAT = 2
FORMAT_KEY = "store_format"  # in the dataset's and spec's zarr attributes, COMPLETE.json and PART.json
WRITTEN_BY_KEY = "written_by"  # "clmer <version>"
ZARR_JSON = "zarr.json"
DIGEST = "xxh3_64"  # index column (per clip) and values attribute (per part, 16 hex digits) of format 2
CLIPS_FILE = "clips.parquet"
LEDGER_FILE = "ledger.parquet"
FEATURES_DIR = "features"
PARTS_DIR = "parts"
TMP_PREFIX = ".tmp-"
RETIRED_PREFIX = f"{TMP_PREFIX}retired-"  # a part merged away by finalize: parts/<this><part>-<ns hex>
PART_FILE = "PART.json"
INDEX_FILE = "index.parquet"
RECORDS_FILE = "records.parquet"
FAILURES_FILE = "failures.parquet"
COMPLETE_FILE = "COMPLETE.json"
LOCK_FILE = ".lock"  # flock()ed while a finalize rewrites index files and the ledger

# Which cache key a clip is filed under for a feature (a feature's ``key_input``): the manifest key
# columns to look in, first non-null wins. Its own key family first, else the other one: a
# text-only clip of a video feature is filed (as absent) under its text key; a clip without
# manifest text is filed under its media key for a text feature (as absent, or with the text of
# its transcript when the feature reads asr). "text_or_media" is the name stores written before
# this rule gave the text rule. The one rule: the planner files rows by it, Store.current_keys
# (readers, status, verify) finds them by it.
KEY_COLUMNS = {"media": ("media_key", "text_key"), "text": ("text_key", "media_key"),
               "text_or_media": ("text_key", "media_key")}
KEY_INPUTS = tuple(KEY_COLUMNS)


def key_columns(input: str) -> tuple[str, ...]:
    try:
        return KEY_COLUMNS[input]
    except KeyError:
        raise ValueError(f"key input must be one of {KEY_INPUTS}, not {input!r}") from None


def row_key(row: dict[str, Any], input: str) -> str | None:
    """The cache key of one manifest row for a feature whose clips use ``input`` keys."""
    for col in key_columns(input):
        if row.get(col):
            return row[col]
    return None

LEDGER_SCHEMA = {
    "clip_id": pl.Utf8,
    "clip_key": pl.Utf8,
    "feature": pl.Utf8,
    "spec_id": pl.Utf8,
    "stage": pl.Utf8,
    "error": pl.Utf8,
    "message": pl.Utf8,
    "kind": pl.Utf8,
    "attempt": pl.Int64,
    "part": pl.Utf8,
}


def feature_dir(root: Path, feature: str, spec_id: str) -> Path:
    return root / FEATURES_DIR / feature / spec_id


@contextlib.contextmanager
def atomic_output(path: Path, *, sync: bool = False) -> Iterator[Path]:
    """The one way this project writes a file (or folder) atomically: yields a temporary path
    beside ``path`` (same folder, so the rename is atomic; a name no other writer uses); when
    the block ends without an error it replaces ``path`` (``sync``: fsync'd first), when it
    raises it is removed. A folder written there replaces a folder at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if sync and tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        elif tmp.is_file() and path.is_dir():
            shutil.rmtree(path)
        elif tmp.is_dir() and path.exists():
            path.unlink()
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def atomic_write_bytes(path: StorePath, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, fsync'd (on an object store, one PUT: readers
    see the old object or the new one)."""
    if is_object(path):
        path.write_bytes(data)
        return
    with atomic_output(path, sync=True) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def parquet_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf)
    return buf.getvalue()


def read_parquet(path: StorePath, columns: list[str] | None = None) -> pl.DataFrame:
    """A parquet file of the store, local or on an object store (one GET)."""
    if is_object(path):
        return pl.read_parquet(io.BytesIO(path.read_bytes()), columns=columns)
    return pl.read_parquet(path, columns=columns)


def atomic_write_parquet(path: StorePath, df: pl.DataFrame) -> None:
    if is_object(path):  # one PUT: readers see the old object or the new one
        path.write_bytes(parquet_bytes(df))
        return
    with atomic_output(path) as tmp:
        df.write_parquet(tmp)


def read_json(path: StorePath) -> Any:
    return json.loads(path.read_text())


def sha256_file(path: StorePath, bufsize: int = 1 << 20) -> str:
    if is_object(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def crc32_file(path: StorePath, bufsize: int = 4 << 20) -> str:
    """CRC-32 of a file as 8 hex digits (the file checksum of format 1 parts)."""
    if is_object(path):
        return f"{zlib.crc32(path.read_bytes()):08x}"
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def xxh3_file(path: StorePath, bufsize: int = 4 << 20) -> str:
    """xxh3-64 of a file as 16 hex digits (the file checksum of format 2 parts: about 20 GB/s
    here, against 1 GB/s for zlib's CRC-32; part checksums guard against corruption, not tampering)."""
    if is_object(path):
        return xxhash.xxh3_64_hexdigest(path.read_bytes())
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def file_entry(data: Any) -> dict[str, Any]:
    """PART.json's record of a file written from memory (bytes or a buffer): size and xxh3-64."""
    view = memoryview(data).cast("B")
    return {"size": view.nbytes, DIGEST: f"{xxhash.xxh3_64_intdigest(view):016x}"}


def file_mismatch(path: StorePath, want: dict[str, Any], size: int | None = None) -> str | None:
    """How a file differs from PART.json's record of it (size, then its xxh3-64 or, in
    format 1 parts, CRC-32), or None when it matches; ``size`` when the caller knows it (-1: missing)."""
    if size is None:
        size = path.stat().st_size if path.exists() else -1
    if size != want.get("size"):
        return f"truncated or grown: {size} bytes, expected {want.get('size')}" if size >= 0 else "missing"
    if DIGEST in want:
        ok = xxh3_file(path) == want[DIGEST]
    else:
        ok = crc32_file(path) == want.get("crc32")
    return None if ok else f"checksum mismatch, {size} bytes"


def file_checksums(
    folder: Path, exclude: tuple[str, ...] = (PART_FILE,), known: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Size and xxh3-64 of every file under ``folder`` (relative posix paths), except ``exclude``;
    those in ``known`` (recorded from the bytes as they were written) are not read back."""
    known = known or {}
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            rel = p.relative_to(folder).as_posix()
            if rel not in exclude:
                out[rel] = known[rel] if rel in known else {"size": p.stat().st_size, DIGEST: xxh3_file(p)}
    return out


def committed_parts(feature_path: StorePath) -> list[Any]:
    """A feature spec's committed part folders, sorted (temporary ones are not parts yet; on an
    object store, a part is committed once its marker ``PART.json`` is there)."""
    if is_object(feature_path):
        return [feature_path / PARTS_DIR / n for n in sorted(object_parts(feature_path)[0])]
    parts = feature_path / PARTS_DIR
    if not parts.is_dir():
        return []
    return sorted(p for p in parts.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX))


# ---------------------------------------------------------------------- object stores
TWIN_SEP = "~"  # an object-store part is <part name>~<attempt token>: twins never share a key


def base_part_name(name: str) -> str:
    """The partition's part name of a part folder (an object-store part carries its attempt token)."""
    return name.split(TWIN_SEP, 1)[0]


def object_parts(feature_path: ObjPath) -> tuple[set[str], dict[str, float]]:
    """One listing of ``parts/``: the names of marked (committed) parts, and of every unmarked
    one the time of its newest object (a writer at work, or a crashed one's leftovers)."""
    marked: set[str] = set()
    newest: dict[str, float] = {}
    for o in (feature_path / PARTS_DIR).walk():
        rel = o["path"][len((feature_path / PARTS_DIR).key) + 1:]
        if "/" not in rel:
            continue  # parts/zarr.json
        name, rest = rel.split("/", 1)
        if rest == PART_FILE:
            marked.add(name)
        newest[name] = max(newest.get(name, 0.0), o["last_modified"].timestamp())
    return marked, {n: t for n, t in newest.items() if n not in marked}


def remove_tree(path: StorePath, marker: str | None = None) -> None:
    """Remove a folder so that readers stop seeing it at once: renamed aside then deleted on a
    local disk; on an object store its ``marker`` object (what makes it visible) goes first."""
    if is_object(path):
        if marker:
            (path / marker).unlink(missing_ok=True)
        path.delete_tree()
        return
    if not path.exists():
        return
    trash = path.with_name(f"{TMP_PREFIX}rm-{path.name}-{time.time_ns():x}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def empty_ledger() -> pl.DataFrame:
    return pl.DataFrame(schema=LEDGER_SCHEMA)


# ---------------------------------------------------------------------- format version
def digest(block: Any) -> int:
    """The checksum of a block of stored rows (xxh3, 64 bits; C-contiguous little-endian bytes)."""
    return xxhash.xxh3_64_intdigest(block)


def format_stamp() -> dict[str, Any]:
    """What every versioned record carries: the store format and the clmer that wrote it."""
    return {FORMAT_KEY: STORE_FORMAT, WRITTEN_BY_KEY: f"clmer {__version__}"}


def format_of(meta: dict[str, Any]) -> int:
    """The store format a record was written in (format 1 wrote none)."""
    return int(meta.get(FORMAT_KEY, 1))


def check_format(meta: dict[str, Any], where: Path) -> int:
    """Refuse a record of a newer store format than this clmer reads, in one line."""
    found = format_of(meta)
    if found > STORE_FORMAT:
        by = meta.get(WRITTEN_BY_KEY) or meta.get("clmer_version") or "a newer clmer"
        raise StoreError(
            f"{where}: written by {by} in store format {found}; this clmer {__version__} reads store formats "
            f"up to {STORE_FORMAT}: upgrade clmer (pip install -U clmer) to read it"
        )
    return found


# ---------------------------------------------------------------------- zarr nodes
def node_meta(folder: StorePath) -> dict[str, Any]:
    """A zarr v3 node's ``zarr.json``, read as plain JSON (no zarr import on the hot path).
    A spec's carries the consolidated metadata of all its parts (about 2 KB a part): it is
    parsed once per version of the file (same inode, size and mtime), not once per caller
    (on an object store, once per call: one GET).
    The result is shared: do not modify it."""
    path = folder / ZARR_JSON
    if is_object(path):
        return read_json(path)
    st = os.stat(path)
    return _node_meta(str(path), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _node_meta(path: str, ino: int, size: int, mtime_ns: int) -> dict[str, Any]:
    return read_json(Path(path))


def node_attrs(folder: StorePath) -> dict[str, Any]:
    """A zarr v3 node's attributes (a copy of the top level: see ``node_meta``)."""
    return dict(node_meta(folder).get("attributes", {}))


def write_group(folder: StorePath, attrs: dict[str, Any], consolidated: dict[str, Any] | None = None) -> None:
    """Write (atomically) the ``zarr.json`` of a zarr v3 group."""
    meta: dict[str, Any] = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
    if consolidated is not None:
        meta["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": consolidated}
    atomic_write_json(folder / ZARR_JSON, meta)


def update_node_attrs(folder: StorePath, updates: dict[str, Any]) -> None:
    """Merge ``updates`` into a zarr node's attributes, keeping the rest of its ``zarr.json``."""
    meta = read_json(folder / ZARR_JSON)
    meta["attributes"] = {**meta.get("attributes", {}), **updates}
    atomic_write_json(folder / ZARR_JSON, meta)


def ensure_group(folder: StorePath, attrs: dict[str, Any]) -> None:
    """Make ``folder`` a zarr v3 group if it is not a zarr node yet (concurrent callers
    write the same bytes; an existing node is left as it is)."""
    if not (folder / ZARR_JSON).exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_group(folder, attrs)


def ensure_dataset(root: StorePath) -> None:
    """Make the dataset folder a zarr group stamped with the store format, or refuse one
    that a newer clmer wrote (a format 1 store gets its group the first time this clmer
    writes into it)."""
    if (root / ZARR_JSON).exists():
        check_format(node_attrs(root), root)
    else:
        ensure_group(root, {**format_stamp(), "dataset": root.name})


def ensure_hierarchy(root: StorePath, feature: str) -> None:
    """The zarr groups above a feature spec: the dataset, ``features`` and the feature."""
    ensure_dataset(root)
    ensure_group(root / FEATURES_DIR, {})
    ensure_group(root / FEATURES_DIR / feature, {"feature": feature})


def consolidate_spec(feature_path: StorePath, parts: list[Any]) -> None:
    """Write the metadata of ``parts`` (committed parts only) and their arrays into the
    spec's ``zarr.json``, in the layout zarr-python's ``consolidate_metadata`` writes.

    zarr-python lists a group's folder to find its members and warns about every file
    that is not a zarr node (index.parquet, COMPLETE.json, PART.json...); with the
    metadata consolidated, ``zarr.open_group(<spec folder>)`` walks the finalized
    feature without listing, so without warnings and without the unfinished parts."""
    nested = {"kind": "inline", "must_understand": False, "metadata": {}}
    flat: dict[str, Any] = {}

    def add(rel: str, folder: Path) -> None:
        meta = read_json(folder / ZARR_JSON)
        if meta.get("node_type") == "group":
            meta["consolidated_metadata"] = nested
        flat[rel] = meta

    ensure_group(feature_path / PARTS_DIR, {})
    add(PARTS_DIR, feature_path / PARTS_DIR)
    for part in parts:
        if is_object(part):  # one listing instead of a request per child
            nodes = sorted(o["path"][len(part.key) + 1:] for o in part.walk() if o["path"].endswith("/" + ZARR_JSON))
            for rel in nodes:
                child = rel[: -len(ZARR_JSON) - 1]
                add(f"{PARTS_DIR}/{part.name}" + (f"/{child}" if child else ""), part / child if child else part)
            continue
        if not (part / ZARR_JSON).exists():
            continue
        add(f"{PARTS_DIR}/{part.name}", part)
        for child in sorted(part.iterdir()):
            if (child / ZARR_JSON).exists():
                add(f"{PARTS_DIR}/{part.name}/{child.name}", child)
    own = read_json(feature_path / ZARR_JSON)
    write_group(feature_path, own.get("attributes", {}), consolidated=flat)
