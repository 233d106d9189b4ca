"""Export a stored feature to a .npy folder, an HDF5 file or an MMSA-style pickle.

The layouts are the ones ``import`` reads (see ``interop.formats``). Values
keep the stored dtype; a ``vector`` feature (imported from ``[D]`` arrays)
is written as ``[D]`` per clip, everything else as ``[T, D]``. Timestamps go
to ``times/`` (npy), ``times`` (HDF5); MMSA pickles have no place for them.
MMSA pickles are grouped by the manifest snapshot's ``split`` column (``all``
when there is none) and carry ``raw_text`` and ``regression_labels`` /
``classification_labels`` when the manifest has text and labels. The output
is written beside its final name and renamed into place when complete.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
from tqdm import tqdm

from clmer_features.interop.formats import FORMATS, InteropError, encode_name
from clmer_features.store import FeatureReader, open_store
from clmer_features.store.layout import atomic_output

BATCH = 512
FLUSH_ROWS = 1 << 16  # HDF5 packed export: rows buffered before each append


@dataclass
class ExportSummary:
    feature: str
    spec_id: str
    fmt: str
    out: str
    clips: int
    layout: str
    dtype: str

    def text(self) -> str:
        return (f"exported {self.clips} clips of {self.feature}/{self.spec_id} ({self.layout}, {self.dtype}) "
                f"to {self.fmt} {self.out}")


def _batches(reader: FeatureReader, ids: list[str], progress: bool) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    bar = tqdm(total=len(ids), desc=f"export {reader.spec.feature}", unit="clip", disable=not progress)
    for s in range(0, len(ids), BATCH):
        chunk = ids[s:s + BATCH]
        for cid, v, t in zip(chunk, reader.get_many(chunk), reader.times_many(chunk)):
            if t is not None and np.isnan(t).all():
                t = None
            yield cid, v, t
        bar.update(len(chunk))
    bar.close()


def export_features(
    feature: str,
    fmt: str,
    out: str | os.PathLike[str],
    *,
    dataset: str,
    cache_dir: str | os.PathLike[str] | None = None,
    spec_id: str | None = None,
    key: str | None = None,
    h5_layout: str = "packed",
    overwrite: bool = False,
    progress: bool = True,
) -> ExportSummary:
    """Write every clip of a finalized feature (the manifest snapshot's clips, in its order)."""
    if fmt not in FORMATS:
        raise InteropError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    if h5_layout not in ("packed", "per-clip"):
        raise InteropError(f"h5_layout must be 'packed' or 'per-clip', not {h5_layout!r}")
    store = open_store(cache_dir, dataset)
    reader = store.feature(feature, spec_id=spec_id)
    layout = reader.spec.params.get("layout", "sequence")
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise InteropError(f"{out} exists; pass --overwrite to replace it")
    ids = reader.clip_ids
    if not ids:
        raise InteropError(f"{feature}/{reader.spec.spec_id}: no clips to export")
    with atomic_output(out) as tmp:
        if fmt == "npy":
            _write_npy(tmp, _batches(reader, ids, progress), layout)
        elif fmt == "hdf5":
            _write_h5(tmp, _batches(reader, ids, progress), layout, h5_layout, reader, key)
        else:
            _write_mmsa(tmp, _batches(reader, ids, progress), layout, store.clips(), key or feature)
    return ExportSummary(feature, reader.spec.spec_id, fmt, str(out), len(ids), layout, str(reader.spec.params.get("dtype", "float16")))


def _write_npy(dest: Path, items: Iterator[tuple[str, np.ndarray, np.ndarray | None]], layout: str) -> None:
    dest.mkdir(parents=True)
    for cid, v, t in items:
        name = encode_name(cid)
        np.save(dest / f"{name}.npy", v[0] if layout == "vector" else v, allow_pickle=False)
        if t is not None:
            (dest / "times").mkdir(exist_ok=True)
            np.save(dest / "times" / f"{name}.npy", t, allow_pickle=False)


def _write_h5(dest: Path, items: Iterator[tuple[str, np.ndarray, np.ndarray | None]], layout: str, h5_layout: str,
              reader: FeatureReader, key: str | None) -> None:
    import h5py

    with h5py.File(dest, "w") as f:
        f.attrs["feature"] = reader.spec.feature
        f.attrs["spec"] = reader.spec.canonical_json()
        f.attrs["layout"] = layout
        g = f.require_group(key) if key else f
        if h5_layout == "per-clip":
            feats = g if key else f.create_group("features")
            for cid, v, t in items:
                name = encode_name(cid)
                feats.create_dataset(name, data=v[0] if layout == "vector" else v)
                if t is not None:
                    f.require_group("times").create_dataset(name, data=t)
            return
        _write_h5_packed(g, items, layout, np.dtype(reader.spec.params.get("dtype", "float16")))


class _Appender:
    """A resizable HDF5 dataset filled in blocks (memory stays at one block)."""

    def __init__(self, g, name: str, dtype: np.dtype, tail: tuple[int, ...], fill_rows: int = 0):
        self.ds = g.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
                                   chunks=(max(1, min(4096, (1 << 20) // max(1, int(np.prod(tail or (1,)))))), *tail))
        if fill_rows:  # rows written before this dataset existed (e.g. clips without timestamps)
            self.append(np.full((fill_rows, *tail), np.nan, dtype))

    def append(self, block: np.ndarray) -> None:
        n = self.ds.shape[0]
        self.ds.resize(n + len(block), axis=0)
        self.ds[n:] = block


def _write_h5_packed(g, items: Iterator[tuple[str, np.ndarray, np.ndarray | None]], layout: str, dtype: np.dtype) -> None:
    import h5py

    ids: list[str] = []
    offsets = [0]
    values: _Appender | None = None
    times: _Appender | None = None
    buf_v: list[np.ndarray] = []
    buf_t: list[np.ndarray | None] = []
    dim = 0

    def flush() -> None:
        nonlocal values, times
        rows = [v for v in buf_v if len(v)]
        if rows:
            block = np.concatenate(rows)
            if values is None:
                values = _Appender(g, "values", dtype, (block.shape[1],))
            start = values.ds.shape[0]
            values.append(block)
            if any(t is not None for t in buf_t):
                if times is None:
                    times = _Appender(g, "times", np.dtype(np.float32), (), fill_rows=start)
            if times is not None:
                times.append(np.concatenate([t if t is not None else np.full(len(v), np.nan, np.float32)
                                             for t, v in zip(buf_t, buf_v)]).astype(np.float32))
        buf_v.clear()
        buf_t.clear()

    pending = 0
    for cid, v, t in items:
        ids.append(cid)
        row = v[:1] if layout == "vector" else v
        dim = dim or (row.shape[1] if row.ndim == 2 and len(row) else 0)
        buf_v.append(row)
        buf_t.append(None if layout == "vector" else t)
        offsets.append(offsets[-1] + len(row))
        pending += len(row)
        if pending >= FLUSH_ROWS:
            flush()
            pending = 0
    flush()
    if values is None:
        g.create_dataset("values", data=np.zeros((0, dim), dtype))
    g.create_dataset("clip_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
    if layout != "vector":
        g.create_dataset("offsets", data=np.asarray(offsets, np.int64))


def _write_mmsa(dest: Path, items: Iterator[tuple[str, np.ndarray, np.ndarray | None]], layout: str,
                clips: pl.DataFrame | None, key: str) -> None:
    info: dict[str, dict] = {}
    if clips is not None:
        cols = [c for c in ("clip_id", "split", "text", "label", "label_value") if c in clips.columns]
        info = {r["clip_id"]: r for r in clips.select(cols).iter_rows(named=True)}
    groups: dict[str, list[tuple[str, np.ndarray]]] = {}
    for cid, v, _ in items:
        split = (info.get(cid) or {}).get("split") or "all"
        groups.setdefault(split, []).append((cid, v))
    data: dict[str, dict] = {}
    for split, rows in groups.items():
        ids = [c for c, _ in rows]
        vals = [v for _, v in rows]
        dtype = vals[0].dtype
        d: dict = {"id": ids}
        if layout == "vector":
            d[key] = np.stack([v[0] for v in vals]).astype(dtype, copy=False)
        else:
            dim = max((v.shape[1] for v in vals if v.shape[0]), default=0)
            tmax = max(len(v) for v in vals)
            padded = np.zeros((len(vals), tmax, dim), dtype)
            for i, v in enumerate(vals):
                padded[i, : len(v)] = v
            d[key] = padded
            d[f"{key}_lengths"] = [int(len(v)) for v in vals]
        meta = [info.get(c) or {} for c in ids]
        if meta and all(m.get("text") is not None for m in meta):
            d["raw_text"] = np.array([m["text"] for m in meta], dtype=object)
        if meta and all(m.get("label_value") is not None for m in meta):
            d["regression_labels"] = np.array([m["label_value"] for m in meta], dtype=np.float32)
        if meta and all(m.get("label") is not None for m in meta):
            d["classification_labels"] = np.array([m["label"] for m in meta], dtype=object)
        data[split] = d
    with open(dest, "wb") as f:
        pickle.dump(data, f, protocol=4)
