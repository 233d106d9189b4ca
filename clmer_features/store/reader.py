"""Reading features: batched, whole-shard reads sliced in numpy.

``arr[a:b]`` costs about a millisecond per call in zarr-python 3.1, so a reader
that asks zarr once per clip spends a second per thousand clips. Here every
multi-clip read groups the clips by part and reads each part's rows once.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import polars as pl
import zarr

from clmer_features.errors import StoreError
from clmer_features.spec import FeatureSpec
from clmer_features.store import layout as L
from clmer_features.store.rawread import RawRows

Pooling = Literal["mean", "max", "model"]


@dataclass(frozen=True)
class _Loc:
    part: str
    start: int
    end: int
    item: int


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
        attrs = zarr.open_group(self.dir, mode="r").attrs.asdict()
        self.spec = FeatureSpec.from_dict(attrs["spec"])
        self.input: str = attrs.get("input", "media")
        self.provenance = attrs.get("provenance", {})
        self._arrays: dict[tuple[str, str], zarr.Array | None] = {}
        self._raws: dict[str, RawRows | None] = {}

    # ------------------------------------------------------------------ index
    @cached_property
    def _index(self) -> pl.DataFrame:
        idx = pl.read_parquet(self.dir / L.INDEX_FILE)
        keys = self.store.current_keys(self.input)
        if keys is None:  # no manifest snapshot: the newest part of each clip id wins
            return idx.unique(subset="clip_id", keep="last", maintain_order=True)
        return keys.join(idx.drop("clip_id"), on="clip_key", how="inner", maintain_order="left")

    @cached_property
    def _loc(self) -> dict[str, _Loc]:
        return {
            cid: _Loc(part, s, e, it)
            for cid, part, s, e, it in self._index.select("clip_id", "part", "row_start", "row_end", "item").iter_rows()
        }

    @property
    def clip_ids(self) -> list[str]:
        """Clips of the current manifest that this feature holds, in manifest order."""
        return self._index["clip_id"].to_list()

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._loc

    def __len__(self) -> int:
        return len(self._loc)

    def _locate(self, clip_id: str) -> _Loc:
        try:
            return self._loc[clip_id]
        except KeyError:
            why = self._why_missing(clip_id)
            raise KeyError(f"{self.spec.feature}/{self.spec.spec_id}: clip {clip_id!r} {why}") from None

    def _why_missing(self, clip_id: str) -> str:
        f = self.failures().filter(pl.col("clip_id") == clip_id)
        if f.height:
            r = f.row(0, named=True)
            return f"failed ({r['kind']}) at {r['stage']}: {r['error']}: {r['message']}"
        return "is not in the store (not extracted yet, or its media changed since)"

    def _part_dir(self, part: str) -> Path:
        """A part the index names; one clear error when it is gone from disk."""
        path = self.dir / L.PARTS_DIR / part
        if not (path / L.PART_FILE).exists():
            raise StoreError(
                f"{self.spec.feature}/{self.spec.spec_id}: part {part} (named by the index) is missing from disk "
                f"({path}); run `clmer-features verify --repair`, then rerun extract to recompute its clips"
            )
        return path

    def _array(self, part: str, name: str) -> zarr.Array | None:
        key = (part, name)
        if key not in self._arrays:
            path = self._part_dir(part) / name
            self._arrays[key] = zarr.open_array(path, mode="r") if (path / "zarr.json").exists() else None
        return self._arrays[key]

    def _raw(self, part: str) -> RawRows | None:
        if part not in self._raws:
            self._raws[part] = RawRows.open(self._part_dir(part) / "values")
        return self._raws[part]

    def _empty(self, rows: int = 0) -> np.ndarray:
        return np.zeros((rows, self.dim), dtype=self.dtype)

    @cached_property
    def dim(self) -> int:
        for part in self._index["part"].unique(maintain_order=True).to_list():
            arr = self._array(part, "values")
            if arr is not None:
                return int(arr.shape[1])
        return 0

    @cached_property
    def dtype(self) -> np.dtype:
        return np.dtype(self.spec.params.get("dtype", "float16"))

    def _read_values(self, part: str, start: int, end: int, out: np.ndarray) -> None:
        raw = self._raw(part)
        if raw is not None:
            raw.read(start, end, out)
        else:
            out[...] = self._array(part, "values")[start:end]

    # ------------------------------------------------------------------ single clip
    def get(self, clip_id: str) -> np.ndarray:
        """Rows ``[T, D]`` of one clip, in the stored dtype."""
        loc = self._locate(clip_id)
        out = self._empty(loc.end - loc.start)
        if len(out):
            self._read_values(loc.part, loc.start, loc.end, out)
        return out

    def times(self, clip_id: str) -> np.ndarray | None:
        loc = self._locate(clip_id)
        arr = self._array(loc.part, "times")
        return None if arr is None else arr[loc.start : loc.end]

    # ------------------------------------------------------------------ many clips
    def _plan(self, clip_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Part number, start and end row of each clip asked for (vectorised: a full read
        of 20,000 clips must not spend its time in a Python loop)."""
        idx = self._index
        want = pl.DataFrame({"clip_id": list(clip_ids)}, schema={"clip_id": pl.Utf8}).with_row_index("_order")
        hit = want.join(idx.select("clip_id", "part", "row_start", "row_end"), on="clip_id", how="left").sort("_order")
        if hit["part"].null_count():
            self._locate(hit.filter(pl.col("part").is_null())["clip_id"][0])  # raises with the reason
        names, parts = np.unique(hit["part"].to_numpy().astype(str), return_inverse=True)
        return parts.astype(np.int64), hit["row_start"].to_numpy(), hit["row_end"].to_numpy(), names.tolist()

    def sequences(self, clip_ids: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All rows of the clips, concatenated ``[R, D]`` in the order asked, and ``offsets [N+1]``.

        Clips that lie next to each other in a part and in the request are read
        with one call straight into the result (a whole part in storage order is
        one read).
        """
        clip_ids = self.clip_ids if clip_ids is None else list(clip_ids)
        parts, starts, ends, names = self._plan(clip_ids)
        offsets = np.zeros(len(clip_ids) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        out = np.empty((int(offsets[-1]), self.dim), dtype=self.dtype)
        if not len(clip_ids):
            return out, offsets
        # a new run starts where the part changes or the rows are not adjacent
        breaks = np.flatnonzero((parts[1:] != parts[:-1]) | (starts[1:] != ends[:-1])) + 1
        run_lo = np.concatenate([[0], breaks])
        run_hi = np.concatenate([breaks, [len(clip_ids)]])
        for a, b in zip(run_lo.tolist(), run_hi.tolist()):
            lo, hi = int(starts[a]), int(ends[b - 1])
            if hi > lo:
                self._read_values(names[parts[a]], lo, hi, out[offsets[a] : offsets[b]])
        return out, offsets

    def lengths(self, clip_ids: Sequence[str]) -> np.ndarray:
        """How many rows each clip holds (0 for a clip this feature does not hold), from the index alone."""
        want = pl.DataFrame({"clip_id": list(clip_ids)}, schema={"clip_id": pl.Utf8})
        n = (pl.col("row_end") - pl.col("row_start")).alias("_rows")
        hit = want.join(self._index.select("clip_id", n), on="clip_id", how="left", maintain_order="left")
        return hit["_rows"].fill_null(0).to_numpy().astype(np.int64)

    def get_many(self, clip_ids: Sequence[str]) -> list[np.ndarray]:
        """Rows of many clips, in the order asked (views into one buffer; see ``sequences``)."""
        values, offsets = self.sequences(clip_ids)
        return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]

    def times_many(self, clip_ids: Sequence[str]) -> list[np.ndarray | None]:
        locs = [self._locate(c) for c in clip_ids]
        cache: dict[str, np.ndarray | None] = {}
        out: list[np.ndarray | None] = []
        for loc in locs:
            if loc.part not in cache:
                arr = self._array(loc.part, "times")
                cache[loc.part] = None if arr is None else arr[:]
            block = cache[loc.part]
            out.append(None if block is None else block[loc.start : loc.end])
        return out

    def pooled(self, clip_ids: Sequence[str] | None = None, how: Pooling = "mean") -> np.ndarray:
        """One float32 row per clip: mean or max over its rows, or the model's own pooled vector."""
        clip_ids = self.clip_ids if clip_ids is None else list(clip_ids)
        if how == "model":
            blocks: dict[str, np.ndarray] = {}
            rows = []
            for loc in (self._locate(c) for c in clip_ids):
                if loc.part not in blocks:
                    arr = self._array(loc.part, "pooled")
                    if arr is None:
                        raise StoreError(f"{self.spec.feature}/{self.spec.spec_id} has no model-pooled vectors; use how='mean'")
                    blocks[loc.part] = arr[:]
                rows.append(blocks[loc.part][loc.item])
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
        rec = pl.read_parquet(path)
        keep = self._index["clip_key"].implode()
        return rec.filter(pl.col("clip_key").is_in(keep))

    def failures(self) -> pl.DataFrame:
        """Clips of the current manifest that failed (kind 'error') or lack the modality ('absent')."""
        fails = pl.read_parquet(self.dir / L.FAILURES_FILE)
        keys = self.store.current_keys(self.input)
        if keys is None:
            return fails
        return fails.filter(pl.col("clip_key").is_in(keys["clip_key"].implode()))

    def missing(self, clip_ids: Iterable[str] | None = None) -> list[str]:
        """Clips neither extracted nor failed (to do)."""
        keys = self.store.current_keys(self.input)
        wanted = list(clip_ids) if clip_ids is not None else (keys["clip_id"].to_list() if keys is not None else [])
        failed = set(self.failures()["clip_id"].to_list())
        return [c for c in wanted if c not in self._loc and c not in failed]

    def __repr__(self) -> str:
        return f"<FeatureReader {self.spec.describe()}: {len(self)} clips>"


class StoreLike:  # the part of Store that readers need (keeps the import graph one-way)
    root: Path

    def current_keys(self, input: str) -> pl.DataFrame | None:  # pragma: no cover - interface
        raise NotImplementedError
