"""Row reads from a part's values shard on an object store: byte ranges, fetched in batches.

The same layout as :mod:`rawread` (one uncompressed shard per part, rows at
``row * row_bytes``), read with HTTP range requests instead of ``preadv``. A reader
first asks :meth:`ObjectRows.prefetch` for every row range it will need from a part:
ranges less than ``COALESCE`` bytes apart are merged, and the merged ranges are
fetched concurrently. So a scan costs about one request per part, and 1000 random
clips one request per group of nearby clips, never one per clip.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from clmer_features.store.objpath import ObjPath
from clmer_features.store.rawread import CorruptShard, RawRows

COALESCE = 1 << 20  # bytes between two ranges that one request spans rather than two (obstore's default)


def coalesce(ranges: list[tuple[int, int]], gap: int = COALESCE) -> list[tuple[int, int]]:
    """Byte ranges merged where they overlap or lie less than ``gap`` bytes apart (sorted)."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo - out[-1][1] <= gap:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(a, b) for a, b in out]


@dataclass
class ObjectRows(RawRows):
    _starts: list[int] = field(default_factory=list, repr=False)  # prefetched byte ranges, sorted
    _blocks: list[tuple[int, int, memoryview]] = field(default_factory=list, repr=False)

    @classmethod
    def open(cls, array_dir: ObjPath, meta: dict | None = None) -> "ObjectRows | None":  # type: ignore[override]
        rows = super().open(array_dir, meta)  # type: ignore[arg-type]
        if rows is not None and not rows.contiguous:
            return None  # another layout: read through zarr
        return rows  # type: ignore[return-value]

    @staticmethod
    def _tail(array_dir: ObjPath, shard: ObjPath, nbytes: int) -> tuple[int, bytes, None] | None:  # type: ignore[override]
        """One request: the last ``nbytes`` bytes and the object's size (no descriptor to keep)."""
        import obstore

        shard.bucket.count()
        try:
            res = obstore.get(shard.bucket.store, shard.key, options={"range": {"suffix": nbytes}})
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ == "NotFoundError":
                return None
            raise
        return int(res.meta["size"]), bytes(res.bytes()), None

    def close(self) -> None:
        self._starts, self._blocks = [], []

    def will_need(self, start: int, end: int) -> None:
        """Nothing: the reader prefetches whole windows of ranges (:meth:`prefetch`)."""

    @property
    def _row_bytes(self) -> int:
        return self.shape[1] * self.dtype.itemsize

    def prefetch(self, rows: list[tuple[int, int]]) -> int:
        """Fetch the row ranges ``[(start, end), ...]`` (coalesced, concurrently) for the next
        reads, dropping what an earlier prefetch held. Returns the requests made."""
        rb = self._row_bytes
        merged = coalesce([(a * rb, b * rb) for a, b in rows if b > a])
        self.close()
        if not merged:
            return 0
        shard: ObjPath = self.path  # type: ignore[assignment]
        got = shard.read_ranges([a for a, _ in merged], [b for _, b in merged])
        for (lo, hi), buf in zip(merged, got):
            if len(buf) != hi - lo:
                raise CorruptShard(self.path, f"truncated (read {len(buf)} of {hi - lo} bytes at {lo})")
        self._blocks = [(lo, hi, buf) for (lo, hi), buf in zip(merged, got)]
        self._starts = [lo for lo, _ in merged]
        return len(merged)

    def read(self, start: int, end: int, out: np.ndarray | None = None) -> np.ndarray:
        n, d = end - start, self.shape[1]
        if out is None:
            out = np.empty((n, d), dtype=self.dtype)
        if n <= 0:
            return out
        rb = self._row_bytes
        lo, hi = start * rb, end * rb
        k = bisect_right(self._starts, lo) - 1
        if k >= 0 and self._blocks[k][1] >= hi:
            b0, _, buf = self._blocks[k]
            data = buf[lo - b0 : hi - b0]
        else:  # not prefetched: one request
            data = self.path.read_ranges([lo], [hi])[0]  # type: ignore[union-attr]
            if len(data) != hi - lo:
                raise CorruptShard(self.path, f"truncated (read {len(data)} of {hi - lo} bytes at {lo})")
        out.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
        return out
