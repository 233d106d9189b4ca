"""Reading features: batched reads straight into the result, every byte checked.

``arr[a:b]`` costs about a millisecond per call in zarr-python 3.1, so a reader
that asks zarr once per clip spends a second per thousand clips. Here a
multi-clip read finds its clips with one dictionary and numpy, groups clips
that lie next to each other in a part into one read, and reads values with
``os.preadv`` into the result (``rawread``). Opening a part reads no JSON (its
metadata is consolidated in the spec's ``zarr.json``): one ``open`` and one small
read of its shard index. A scan (runs of 4 MiB and more) reads four runs at a
time in threads: copies from the page cache on every core, and four reads
queued on a cold disk (faster than two here). ``times`` and ``pooled`` (one chunk each) are read from
their file and checked without zarr's codec pipeline.

Integrity: every read checks what it touched. Format 2 parts carry an xxh3-64
checksum of each clip's rows (in the index) and of each part's whole values (in
its attributes): a read of a whole part checks the one, a read of some clips
checks theirs, block by block while the bytes are still in the CPU cache (xxh3
runs at ~45 GB/s there, crc32c at 10-26); ``times`` and ``pooled`` carry zarr's
crc32c codec. Format 1 parts have no per-clip checksum: the first read that
touches one checks its array files whole against the sizes and CRC-32s its
``PART.json`` recorded, once per reader.
A mismatch raises ``CorruptDataError`` naming the file, feature, part and clip.
"""
from __future__ import annotations

import threading
from bisect import bisect_right
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import polars as pl

from clmer_features.errors import StoreError
from clmer_features.spec import FeatureSpec
from clmer_features.store import layout as L
from clmer_features.store.objpath import StorePath, is_object
from clmer_features.store.rawread import CorruptShard, RawRows, read_checked_chunk

Pooling = Literal["mean", "max", "model"]
_OPEN_FILES = 128  # shard descriptors a reader keeps open (least recently used are closed)
_ARRAYS = ("values", "times", "pooled")
_BLOCK = 1 << 20  # bytes read before they are checked: small enough to be checked in cache
_PREFETCH = 4 << 20  # runs of this many bytes on average make a scan
_SCAN_THREADS = 4  # threads reading the runs of a scan (a cold disk reads faster with more reads queued)
_WINDOW = 256 << 20  # object stores: bytes fetched (concurrently, over parts) before they are read
_FETCHERS = 16  # object stores: parts opened and fetched at once


class CorruptDataError(StoreError):
    """Stored bytes that do not match their checksum (a flipped bit, a truncated file)."""


@dataclass
class _Table:
    """The index as numpy: one entry per clip of the current manifest, in manifest order."""

    ids: list[str]
    pos: dict[str, int]
    part: np.ndarray  # int64, into ``names``
    start: np.ndarray  # int64
    end: np.ndarray  # int64
    digest: np.ndarray  # uint64, the checksum of the clip's rows (0 where there is none)
    checked: np.ndarray  # bool: has a checksum (False for the clips of format 1 parts)
    item: np.ndarray  # int64, row of the clip's pooled vector
    names: list[str]


@dataclass
class _Part:
    name: str
    dir: StorePath
    raw: RawRows | None = None
    rows: int = 0
    whole: int | None = None  # checksum of all its values (format 2)
    legacy_checked: bool = False
    arrays: dict[str, object] = field(default_factory=dict)


class FeatureReader:
    """One finalized feature spec in a store."""

    def __init__(self, store: "StoreLike", feature: str, spec_id: str):
        self.store = store
        self.dir = L.feature_dir(store.root, feature, spec_id)
        complete = self.dir / L.COMPLETE_FILE
        if not complete.exists():
            raise StoreError(
                f"{self.dir}: feature {feature}/{spec_id} is not finalized (no {L.COMPLETE_FILE}); "
                "an extraction is running or crashed: rerun `clmer-features extract` to finish it"
            )
        self.complete = L.read_json(complete)
        self.format = L.check_format(self.complete, complete)
        node = L.node_meta(self.dir)
        attrs = node.get("attributes", {})
        # finalize consolidates every part's array metadata here: opening a part reads no JSON
        self._consolidated: dict = (node.get("consolidated_metadata") or {}).get("metadata") or {}
        self.spec = FeatureSpec.from_dict(attrs["spec"])
        self.input: str = attrs.get("input", "media")
        self.provenance = attrs.get("provenance", {})
        self._parts: dict[str, _Part] = {}
        self._open: OrderedDict[str, RawRows] = OrderedDict()
        self._lock = threading.RLock()  # scans read runs in threads: the open parts change under it

    # ------------------------------------------------------------------ index
    @cached_property
    def _index(self) -> pl.DataFrame:
        idx = L.read_parquet(self.dir / L.INDEX_FILE)
        if L.DIGEST not in idx.columns:  # finalized by format 1
            idx = idx.with_columns(pl.lit(None, dtype=pl.UInt64).alias(L.DIGEST))
        keys = self.store.current_keys(self.input)
        if keys is None:  # no manifest snapshot: the newest part of each clip id wins
            return idx.unique(subset="clip_id", keep="last", maintain_order=True)
        return keys.join(idx.drop("clip_id"), on="clip_key", how="inner", maintain_order="left")

    @cached_property
    def _table(self) -> _Table:
        idx = self._index
        ids = idx["clip_id"].to_list()
        names = idx["part"].unique().sort()
        part = idx["part"].rank("dense").to_numpy().astype(np.int64) - 1  # into the sorted names
        digest = idx[L.DIGEST]
        return _Table(
            ids=ids,
            pos={c: i for i, c in enumerate(ids)},
            part=part.reshape(-1),
            start=idx["row_start"].to_numpy().astype(np.int64),
            end=idx["row_end"].to_numpy().astype(np.int64),
            digest=digest.fill_null(0).to_numpy().astype(np.uint64),
            checked=digest.is_not_null().to_numpy(),
            item=idx["item"].to_numpy().astype(np.int64),
            names=names.to_list(),
        )

    @property
    def clip_ids(self) -> list[str]:
        """Clips of the current manifest that this feature holds, in manifest order."""
        return list(self._table.ids)

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._table.pos

    def __len__(self) -> int:
        return len(self._table.ids)

    def _locate(self, clip_id: str) -> int:
        try:
            return self._table.pos[clip_id]
        except KeyError:
            why = self._why_missing(clip_id)
            raise KeyError(f"{self.spec.feature}/{self.spec.spec_id}: clip {clip_id!r} {why}") from None

    def _positions(self, clip_ids: Sequence[str]) -> np.ndarray:
        pos = self._table.pos
        try:
            return np.fromiter((pos[c] for c in clip_ids), dtype=np.int64, count=len(clip_ids))
        except KeyError as exc:
            self._locate(exc.args[0])  # raises with the reason
            raise

    def _why_missing(self, clip_id: str) -> str:
        f = self.failures().filter(pl.col("clip_id") == clip_id)
        if f.height:
            r = f.row(0, named=True)
            return f"failed ({r['kind']}) at {r['stage']}: {r['error']}: {r['message']}"
        return "is not in the store (not extracted yet, or its media changed since)"

    # ------------------------------------------------------------------ parts
    def _where(self, part: str) -> str:
        return f"feature {self.spec.feature}/{self.spec.spec_id}, part {part}"

    def _corrupt(self, path: Path, part: str, what: str) -> CorruptDataError:
        return CorruptDataError(
            f"{path}: corrupt data ({what}; {self._where(part)}): run `clmer-features verify` to list the damaged "
            "files, then delete the part's folder and rerun `clmer-features extract` to recompute its clips"
        )

    def _gone(self, part: str) -> StoreError:
        path = self.dir / L.PARTS_DIR / part
        try:
            now = L.read_json(self.dir / L.COMPLETE_FILE).get("finalized_ns")
        except (OSError, ValueError):
            now = None
        if now is not None and now != self.complete.get("finalized_ns"):
            return StoreError(
                f"{self.spec.feature}/{self.spec.spec_id}: part {part} is gone: the feature was finalized again "
                "after this reader opened it (its small parts merged, or a repair); open the store again to read it"
            )
        return StoreError(
            f"{self.spec.feature}/{self.spec.spec_id}: part {part} (named by the index) is missing from disk "
            f"({path}); run `clmer-features verify --repair`, then rerun extract to recompute its clips"
        )

    def _array_meta(self, part: str, name: str) -> dict | None:
        """An array's ``zarr.json``: from the spec's consolidated metadata, else its own file."""
        meta = self._consolidated.get(f"{L.PARTS_DIR}/{part}/{name}")
        if meta is None:
            path = self.dir / L.PARTS_DIR / part / name / L.ZARR_JSON
            meta = L.read_json(path) if path.exists() else None
        return meta

    def _part(self, name: str) -> _Part:
        p = self._parts.get(name)
        if p is not None:
            return p
        new = self._open_part(name)  # outside the lock: the threads of a scan open parts at once
        with self._lock:
            p = self._parts.get(name)
            if p is None:
                p = self._parts[name] = new
                if p.raw is not None:
                    self._fd_opened(p)
                return p
        if new.raw is not None:  # another thread opened it first
            new.raw.close()
        return p

    def _part_dir(self, name: str) -> StorePath:
        """A part's folder; one merged away by a finalize after this reader opened the index is
        found where finalize moved it (``writer.retired_name``), for a while."""
        pdir = self.dir / L.PARTS_DIR / name
        if is_object(pdir) or pdir.is_dir():
            return pdir
        moved = sorted((self.dir / L.PARTS_DIR).glob(f"{L.RETIRED_PREFIX}{name}-*"))
        return moved[-1] if moved else pdir

    def _open_part(self, name: str) -> _Part:
        """A part the index names: its values shard opened (one ``open``, one read of the
        shard index); one clear error when it is gone from disk."""
        pdir = self._part_dir(name)
        try:
            opener = RawRows
            if is_object(pdir):
                from clmer_features.store.objread import ObjectRows as opener  # type: ignore[assignment]
            raw = opener.open(pdir / "values", self._consolidated.get(f"{L.PARTS_DIR}/{name}/values"))
        except FileNotFoundError:
            raise self._gone(name) from None
        except CorruptShard as exc:
            raise self._corrupt(exc.path, name, exc.what) from None
        if raw is not None:
            rows, whole = raw.shape[0], raw.attrs.get(L.DIGEST)
        else:
            if not (pdir / L.PART_FILE).exists():
                raise self._gone(name)
            meta = self._array_meta(name, "values") or {}
            rows, whole = (meta.get("shape") or [0])[0], meta.get("attributes", {}).get(L.DIGEST)
        return _Part(name, pdir, raw, int(rows), None if whole is None else int(whole, 16))

    def _fd_opened(self, p: _Part) -> RawRows:
        """The part's raw reader, counted among the shards kept open (closing the oldest)."""
        raw = p.raw
        assert raw is not None
        with self._lock:
            self._open[p.name] = raw
            self._open.move_to_end(p.name)
            while len(self._open) > _OPEN_FILES:
                _, old = self._open.popitem(last=False)
                old.close()
        return raw

    def _check_legacy(self, p: _Part) -> None:
        """A format 1 part has no per-clip checksums: check its array files whole against
        the sizes and CRC-32s its PART.json recorded (once per reader)."""
        if p.legacy_checked:
            return
        meta_path = p.dir / L.PART_FILE
        files = L.read_json(meta_path).get("files", {}) if meta_path.exists() else {}
        for rel, want in sorted(files.items()):
            if rel.split("/", 1)[0] not in _ARRAYS:
                continue
            path = p.dir / rel
            size = path.stat().st_size if path.exists() else -1
            if size != want["size"]:
                raise self._corrupt(path, p.name, f"{size} bytes where {want['size']} were written")
            if L.crc32_file(path) != want["crc32"]:
                raise self._corrupt(path, p.name, "the file does not match the CRC-32 recorded in PART.json")
        p.legacy_checked = True

    def _zarr(self, p: _Part, name: str):
        if name not in p.arrays:
            import zarr

            path = p.dir / name
            if not (path / L.ZARR_JSON).is_file():
                p.arrays[name] = None
            elif is_object(path):
                p.arrays[name] = zarr.open_array(store=p.dir.zarr_store(), path=name, mode="r")
            else:
                p.arrays[name] = zarr.open_array(path, mode="r")
        return p.arrays[name]

    def _zarr_read(self, p: _Part, name: str, sel: slice = slice(None)) -> np.ndarray | None:
        """Read a small array (times, pooled), checked by its crc32c codec: the one chunk the
        store writes straight from its file (zarr's pipeline costs about a millisecond a call),
        any other layout through zarr."""
        meta = self._array_meta(p.name, name)
        if meta is None:
            return None
        direct = self._read_checked_chunk(p, name, meta)
        if direct is not None:
            return direct[sel]
        arr = self._zarr(p, name)
        if arr is None:
            return None
        if not self._has_crc32c(arr):
            self._check_legacy(p)
        try:
            return arr[sel]
        except ValueError as exc:
            if "checksum" not in str(exc):
                raise
            raise self._corrupt(p.dir / name / "c" / "0", p.name, "zarr's crc32c check failed") from None

    def _read_checked_chunk(self, p: _Part, name: str, meta: dict) -> np.ndarray | None:
        """Times or pooled in the one-chunk layout the store writes, checked; None for another layout."""
        try:
            return read_checked_chunk(p.dir, name, meta)
        except CorruptShard as exc:
            raise self._corrupt(exc.path, p.name, exc.what) from None

    @staticmethod
    def _has_crc32c(arr) -> bool:
        return any(getattr(c, "to_dict", lambda: {})().get("name") == "crc32c" for c in arr.metadata.codecs)

    def _empty(self, rows: int = 0) -> np.ndarray:
        return np.zeros((rows, self.dim), dtype=self.dtype)

    @cached_property
    def dim(self) -> int:
        for name in self._table.names:
            meta = self._array_meta(name, "values")
            if meta is not None:
                return int(meta["shape"][1])
        return 0

    @cached_property
    def dtype(self) -> np.dtype:
        return np.dtype(self.spec.params.get("dtype", "float16"))

    # ------------------------------------------------------------------ values
    def _read_run(self, t: _Table, sel: list[int], a: int, b: int, offsets: list[int], out: np.ndarray) -> None:
        """Rows of the clips ``sel[a:b]`` (adjacent in one part) into ``out[offsets[a]:offsets[b]]``,
        checked: in blocks of about ``_BLOCK`` bytes, each checked right after its read."""
        first = sel[a]
        p = self._part(t.names[t.part[first]])
        if p.raw is None:
            self._read_run_zarr(p, t, sel, a, b, offsets, out)
            return
        raw = self._fd_opened(p)
        start, row0 = t.start, int(t.start[first])
        if not t.checked[first]:
            self._check_legacy(p)
            self._preadv(raw, p, row0, row0 + offsets[b] - offsets[a], out[offsets[a] : offsets[b]])
            return
        row_bytes = max(1, out.shape[1] * out.itemsize)
        whole = p.whole if (row0 == 0 and offsets[b] - offsets[a] == p.rows and b - a > 1) else None
        hasher = L.xxhash.xxh3_64() if whole is not None else None
        block_rows = max(1, _BLOCK // row_bytes)
        i = a
        while i < b:
            j = max(i + 1, bisect_right(offsets, offsets[i] + block_rows, i, b + 1) - 1)  # whole clips, ~_BLOCK bytes
            block = out[offsets[i] : offsets[j]]
            lo = int(start[sel[i]])
            self._preadv(raw, p, lo, lo + offsets[j] - offsets[i], block)
            if hasher is not None:
                hasher.update(block)
            else:
                self._check_clips(p, t, sel, i, j, offsets, out)
            i = j
        if hasher is not None and hasher.intdigest() != whole:
            self._check_clips(p, t, sel, a, b, offsets, out)  # names the clip
            raise self._corrupt(raw.path, p.name, "the part's rows do not match their checksum")

    def _preadv(self, raw: RawRows, p: _Part, lo: int, hi: int, dest: np.ndarray) -> None:
        try:
            raw.read(lo, hi, dest)
        except CorruptShard as exc:
            raise self._corrupt(exc.path, p.name, exc.what) from None

    def _check_clips(self, p: _Part, t: _Table, sel: list[int], a: int, b: int, offsets: list[int], out: np.ndarray) -> None:
        digest, want = L.digest, t.digest
        for i in range(a, b):
            k = sel[i]
            if digest(out[offsets[i] : offsets[i + 1]]) != want[k]:
                path = p.raw.path if p.raw is not None else p.dir / "values"
                raise self._corrupt(path, p.name, f"the rows of clip {t.ids[k]!r} do not match their checksum")

    def _read_run_zarr(self, p: _Part, t: _Table, sel: list[int], a: int, b: int, offsets: list[int], out: np.ndarray) -> None:
        """Values in a layout rawread declines (compressed, several shards): through zarr."""
        lo = int(t.start[sel[a]])
        try:
            out[offsets[a] : offsets[b]] = self._zarr(p, "values")[lo : lo + offsets[b] - offsets[a]]
        except ValueError as exc:
            if "checksum" not in str(exc):
                raise
            raise self._corrupt(p.dir / "values", p.name, "zarr's checksum check failed") from None
        if t.checked[sel[a]]:
            self._check_clips(p, t, sel, a, b, offsets, out)
        else:
            self._check_legacy(p)

    # ------------------------------------------------------------------ single clip
    def get(self, clip_id: str) -> np.ndarray:
        """Rows ``[T, D]`` of one clip, in the stored dtype."""
        return self.sequences([clip_id])[0]

    def times(self, clip_id: str) -> np.ndarray | None:
        t = self._table
        j = self._locate(clip_id)
        return self._zarr_read(self._part(t.names[int(t.part[j])]), "times", slice(int(t.start[j]), int(t.end[j])))

    # ------------------------------------------------------------------ many clips
    def sequences(self, clip_ids: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All rows of the clips, concatenated ``[R, D]`` in the order asked, and ``offsets [N+1]``.

        Clips that lie next to each other in a part and in the request are read
        with one call straight into the result (a whole part in storage order is
        one read, checked with one checksum).
        """
        t = self._table
        sel = np.arange(len(t.ids), dtype=np.int64) if clip_ids is None else self._positions(list(clip_ids))
        parts, starts, ends = t.part[sel], t.start[sel], t.end[sel]
        offsets = np.zeros(len(sel) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        out = np.empty((int(offsets[-1]), self.dim), dtype=self.dtype)
        if not len(sel):
            return out, offsets
        # a new run starts where the part changes or the rows are not adjacent
        breaks = np.flatnonzero((parts[1:] != parts[:-1]) | (starts[1:] != ends[:-1])) + 1
        bounds = np.concatenate([[0], breaks, [len(sel)]]).tolist()
        sel_l, off_l = sel.tolist(), offsets.tolist()
        runs = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if off_l[b] > off_l[a]]
        if is_object(self.dir):  # fetch windows of runs (concurrent range requests), then read them
            fetched = 0
            for r, (a, b) in enumerate(runs):
                if r >= fetched:
                    fetched = self._fetch_window(t, sel_l, runs, off_l, r, out.shape[1] * out.itemsize)
                self._read_run(t, sel_l, a, b, off_l, out)
            return out, offsets
        big = (off_l[-1] * out.shape[1] * out.itemsize) // max(1, len(runs)) >= _PREFETCH
        if big and len(runs) > 1 and _SCAN_THREADS > 1:
            # a scan: runs are read (and checked) by a few threads at once: copies from the page
            # cache on every core, or several reads queued on the disk when it is cold
            with ThreadPoolExecutor(_SCAN_THREADS) as pool:
                jobs = [pool.submit(self._read_run, t, sel_l, a, b, off_l, out) for a, b in runs]
                try:
                    for job in jobs:
                        job.result()  # the first failure in request order
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
            return out, offsets
        for r, (a, b) in enumerate(runs):
            if big and r + 1 < len(runs):  # large runs (a scan): the next one comes from disk meanwhile
                self._will_need(t, sel_l, *runs[r + 1], off_l)
            self._read_run(t, sel_l, a, b, off_l, out)
        return out, offsets

    def _fetch_window(self, t: _Table, sel: list[int], runs: list[tuple[int, int]], offsets: list[int], r: int,
                      row_bytes: int) -> int:
        """Object stores: fetch the runs from ``r`` on, up to ``_WINDOW`` bytes, before reading
        them: parts are opened and their ranges fetched concurrently (one request per part,
        or per group of nearby clips), dropping the previous window. Returns the first run
        not fetched."""
        for raw in list(self._open.values()):
            raw.close()  # drops what the last window fetched
        want: dict[str, list[tuple[int, int]]] = {}
        nbytes, end = 0, r
        while end < len(runs) and (end == r or (nbytes < _WINDOW and len(want) < _OPEN_FILES // 2)):
            a, b = runs[end]
            lo = int(t.start[sel[a]])
            want.setdefault(t.names[t.part[sel[a]]], []).append((lo, lo + offsets[b] - offsets[a]))
            nbytes += (offsets[b] - offsets[a]) * row_bytes
            end += 1

        def fetch(name: str) -> None:
            p = self._part(name)
            if p.raw is not None and hasattr(p.raw, "prefetch"):
                p.raw.prefetch(want[name])

        with ThreadPoolExecutor(max_workers=min(_FETCHERS, len(want))) as pool:
            list(pool.map(fetch, want))
        with self._lock:
            for name in want:
                if self._parts[name].raw is not None:
                    self._fd_opened(self._parts[name])
        return end

    def lengths(self, clip_ids: Sequence[str]) -> np.ndarray:
        """How many rows each clip holds (0 for a clip this feature does not hold), from the index alone."""
        want = pl.DataFrame({"clip_id": list(clip_ids)}, schema={"clip_id": pl.Utf8})
        n = (pl.col("row_end") - pl.col("row_start")).alias("_rows")
        hit = want.join(self._index.select("clip_id", n), on="clip_id", how="left", maintain_order="left")
        return hit["_rows"].fill_null(0).to_numpy().astype(np.int64)

    def _will_need(self, t: _Table, sel: list[int], a: int, b: int, offsets: list[int]) -> None:
        p = self._part(t.names[t.part[sel[a]]])
        if p.raw is not None:
            lo = int(t.start[sel[a]])
            p.raw.will_need(lo, lo + offsets[b] - offsets[a])

    def get_many(self, clip_ids: Sequence[str]) -> list[np.ndarray]:
        """Rows of many clips, in the order asked (views into one buffer; see ``sequences``)."""
        values, offsets = self.sequences(clip_ids)
        bounds = offsets.tolist()
        return [values[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]

    def times_many(self, clip_ids: Sequence[str]) -> list[np.ndarray | None]:
        t = self._table
        cache: dict[int, np.ndarray | None] = {}
        out: list[np.ndarray | None] = []
        for j in self._positions(list(clip_ids)).tolist():
            k = int(t.part[j])
            if k not in cache:
                cache[k] = self._zarr_read(self._part(t.names[k]), "times")
            block = cache[k]
            out.append(None if block is None else block[t.start[j] : t.end[j]])
        return out

    def pooled(self, clip_ids: Sequence[str] | None = None, how: Pooling = "mean") -> np.ndarray:
        """One float32 row per clip: mean or max over its rows, or the model's own pooled vector."""
        clip_ids = self.clip_ids if clip_ids is None else list(clip_ids)
        if how == "model":
            t = self._table
            blocks: dict[int, np.ndarray] = {}
            rows = []
            for j in self._positions(clip_ids).tolist():
                k = int(t.part[j])
                if k not in blocks:
                    block = self._zarr_read(self._part(t.names[k]), "pooled")
                    if block is None:
                        raise StoreError(f"{self.spec.feature}/{self.spec.spec_id} has no model-pooled vectors; use how='mean'")
                    blocks[k] = block
                rows.append(blocks[k][t.item[j]])
            return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)
        if how not in ("mean", "max"):
            raise ValueError(f"how must be 'mean', 'max' or 'model', not {how!r}")
        values, offsets = self.sequences(clip_ids)
        lengths = np.diff(offsets)
        if (lengths == 0).any():
            cid = clip_ids[int(np.argmax(lengths == 0))]
            raise StoreError(f"{self.spec.feature}: clip {cid!r} has no rows to pool")
        if not len(clip_ids):
            return np.zeros((0, self.dim), np.float32)
        if how == "mean":
            return (np.add.reduceat(values, offsets[:-1], axis=0, dtype=np.float64) / lengths[:, None]).astype(np.float32)
        return np.maximum.reduceat(values, offsets[:-1], axis=0).astype(np.float32)

    # ------------------------------------------------------------------ tables
    def records(self) -> pl.DataFrame:
        """Table outputs (e.g. transcripts) of the current manifest's clips."""
        path = self.dir / L.RECORDS_FILE
        if not path.exists():
            return pl.DataFrame(schema={"clip_key": pl.Utf8, "clip_id": pl.Utf8})
        rec = L.read_parquet(path)
        keep = self._index["clip_key"].implode()
        return rec.filter(pl.col("clip_key").is_in(keep))

    def failures(self) -> pl.DataFrame:
        """Clips of the current manifest that failed (kind 'error') or lack the modality ('absent')."""
        fails = L.read_parquet(self.dir / L.FAILURES_FILE)
        keys = self.store.current_keys(self.input)
        if keys is None:
            return fails
        return fails.filter(pl.col("clip_key").is_in(keys["clip_key"].implode()))

    def missing(self, clip_ids: Iterable[str] | None = None) -> list[str]:
        """Clips neither extracted nor failed (to do)."""
        keys = self.store.current_keys(self.input)
        wanted = list(clip_ids) if clip_ids is not None else (keys["clip_id"].to_list() if keys is not None else [])
        failed = set(self.failures()["clip_id"].to_list())
        have = self._table.pos
        return [c for c in wanted if c not in have and c not in failed]

    def close(self) -> None:
        """Close the shard files this reader keeps open (also done when it is collected)."""
        for raw in self._open.values():
            raw.close()
        self._open.clear()

    def __repr__(self) -> str:
        return f"<FeatureReader {self.spec.describe()}: {len(self)} clips>"


class StoreLike:  # the part of Store that readers need (keeps the import graph one-way)
    root: StorePath

    def current_keys(self, input: str) -> pl.DataFrame | None:  # pragma: no cover - interface
        raise NotImplementedError
