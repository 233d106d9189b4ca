"""Feature files other tools write and read: per-clip .npy folders, HDF5, MMSA pickles.

Layouts (the same ones ``export`` writes, so a round trip is exact):

npy folder
    ``DIR/<clip>.npy`` holds one clip: ``[T, D]`` (a sequence) or ``[D]`` (a
    fixed-size vector). Optional ``DIR/times/<clip>.npy`` holds ``[T]``
    timestamps in seconds. A folder with no top-level .npy is searched
    recursively (``DIR/train/<clip>.npy``); ids are then relative paths,
    which match the manifest by their last part when the full path does not. ``<clip>`` is the clip id with ``%``, ``/`` and ``\\``
    (and a leading ``.``) percent-encoded; names are percent-decoded on import.
HDF5, packed (default on export)
    datasets ``clip_ids [N]`` (UTF-8 strings) and ``values``: ``[N, D]`` one
    vector per clip, or ``[R, D]`` with ``offsets [N+1]`` (clip i is
    ``values[offsets[i]:offsets[i+1]]``); optional ``times [R]``.
HDF5, one dataset per clip
    every dataset below the group ``--key`` (default: ``features`` if present,
    else the root) is one clip, named by its (encoded) clip id, relative to
    that group; ``[T, D]`` or ``[D]``. Optional ``times/<clip>`` datasets.
MMSA pickle
    a dict ``{split: {"id": [...], KEY: array, KEY_lengths: [...], ...}}`` (or one
    such dict without splits), as MMSA's ``unaligned_*.pkl`` / ``aligned_*.pkl``.
    KEY is ``audio``, ``vision`` or ``text`` (``text_bert`` holds token ids, not
    features). ``KEY`` is ``[N, T, D]`` zero-padded at the end, trimmed to
    ``KEY_lengths`` when present, or ``[N, D]`` vectors. Unpickling runs code:
    refused unless ``allow_pickle=True``. MMSA has no timestamps.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import unquote

import numpy as np

from clmer_features.errors import ClmerError

FORMATS = ("npy", "hdf5", "mmsa")
SUFFIX = {"npy": "", "hdf5": ".h5", "mmsa": ".pkl"}


class InteropError(ClmerError):
    """A feature file cannot be imported or exported as asked."""


def encode_name(clip_id: str) -> str:
    """A clip id as a file or HDF5 name: percent-encode ``%``, ``/``, ``\\`` and a leading dot."""
    name = clip_id.replace("%", "%25").replace("/", "%2F").replace("\\", "%5C")
    return "%2E" + name[1:] if name.startswith(".") else name


def decode_name(name: str) -> str:
    return unquote(name)


@dataclass
class Entry:
    """One clip in a source: its id as the source writes it, shape, dtype and a loader."""

    clip_id: str
    shape: tuple[int, ...]
    dtype: np.dtype
    load: Callable[[], tuple[np.ndarray, np.ndarray | None]]


def file_digest(paths: list[Path], base: Path | None = None) -> str:
    """sha256 over the files' relative names and bytes (streamed)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        if base is not None:
            h.update(str(p.relative_to(base)).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- readers


class NpySource:
    fmt = "npy"

    def __init__(self, path: Path, key: str | None = None):
        if not path.is_dir():
            raise InteropError(f"{path}: not a folder of .npy files")
        self.path = path
        self.files = sorted(p for p in path.glob("*.npy") if not p.name.startswith("._"))
        self.nested = not self.files
        if self.nested:  # e.g. DIR/train/<clip>.npy: ids are relative paths (matched by file name too)
            self.files = sorted(p for p in path.rglob("*.npy")
                                if not p.name.startswith("._") and p.relative_to(path).parts[0] != "times")
        if not self.files:
            raise InteropError(f"{path}: no .npy files")
        tdir = path / "times"
        self.times = {p.stem: p for p in tdir.glob("*.npy")} if tdir.is_dir() else {}

    def digest(self) -> str:
        return file_digest(self.files + list(self.times.values()), self.path)

    def entries(self) -> Iterator[Entry]:
        for p in self.files:
            try:
                arr = np.load(p, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise InteropError(f"{p}: not a plain numeric .npy array ({exc})") from None
            tpath = self.times.get(p.stem)

            def load(p: Path = p, tpath: Path | None = tpath) -> tuple[np.ndarray, np.ndarray | None]:
                t = np.load(tpath, allow_pickle=False) if tpath is not None else None
                return np.load(p, allow_pickle=False), t

            rel = p.relative_to(self.path).with_suffix("")
            cid = "/".join(decode_name(x) for x in rel.parts) if self.nested else decode_name(p.stem)
            yield Entry(cid, tuple(arr.shape), arr.dtype, load)

    def close(self) -> None:
        pass


class Hdf5Source:
    fmt = "hdf5"

    def __init__(self, path: Path, key: str | None = None):
        import h5py

        if not path.is_file():
            raise InteropError(f"{path}: HDF5 file not found")
        self.path = path
        self.key = key
        try:
            self.f = h5py.File(path, "r")
        except OSError as exc:
            raise InteropError(f"{path}: not an HDF5 file ({exc})") from None
        root = self.f
        if key:
            if key not in self.f or not isinstance(self.f[key], h5py.Group):
                top = ", ".join(self.f.keys()) or "nothing"  # listed before the file closes
                self.f.close()
                raise InteropError(f"{path}: no group {key!r} (top level: {top})")
            root = self.f[key]
        self.packed = "clip_ids" in root and "values" in root
        if not self.packed and not key and "features" in self.f and isinstance(self.f["features"], h5py.Group):
            root = self.f["features"]
        self.root = root

    def digest(self) -> str:
        return file_digest([self.path])

    def entries(self) -> Iterator[Entry]:
        import h5py

        if self.packed:
            yield from self._packed()
            return
        times = self.f["times"] if "times" in self.f and isinstance(self.f["times"], h5py.Group) else None
        names: list[str] = []
        self.root.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
        if not names:
            raise InteropError(f"{self.path}: no datasets under {self.root.name!r}")
        for name in sorted(names):
            if times is not None and self.root.name == "/" and name.startswith("times/"):
                continue
            ds = self.root[name]

            def load(ds: Any = ds, name: str = name) -> tuple[np.ndarray, np.ndarray | None]:
                t = times[name][()] if times is not None and name in times else None
                return ds[()], t

            yield Entry(decode_name(name), tuple(ds.shape), ds.dtype, load)

    def _packed(self) -> Iterator[Entry]:
        g = self.root
        ids = [str(x) for x in g["clip_ids"].asstr()[()].tolist()]
        values = g["values"]
        offsets = g["offsets"][()] if "offsets" in g else None
        times = g["times"] if "times" in g else None
        if offsets is None:
            if values.shape[0] != len(ids):
                raise InteropError(f"{self.path}: {len(ids)} clip_ids but values has {values.shape[0]} rows and no offsets")
            block = values[()]
            for i, cid in enumerate(ids):
                yield Entry(cid, tuple(values.shape[1:]), values.dtype, lambda i=i: (block[i], None))
            return
        if len(offsets) != len(ids) + 1 or offsets[-1] != values.shape[0]:
            raise InteropError(f"{self.path}: offsets [{len(offsets)}] do not match {len(ids)} clip_ids and {values.shape[0]} rows")
        vals, tvals = _BlockReader(values), (_BlockReader(times) if times is not None else None)
        for i, cid in enumerate(ids):
            a, b = int(offsets[i]), int(offsets[i + 1])

            def load(a: int = a, b: int = b) -> tuple[np.ndarray, np.ndarray | None]:
                return vals.rows(a, b), (tvals.rows(a, b) if tvals is not None else None)

            yield Entry(cid, (b - a, *values.shape[1:]), values.dtype, load)

    def close(self) -> None:
        self.f.close()


class _BlockReader:
    """Rows of a large HDF5 dataset read in blocks: clips are loaded in order, so one read
    serves many clips, and memory stays at one block however big the file is."""

    BLOCK_ROWS = 1 << 16

    def __init__(self, ds: Any):
        self.ds = ds
        self.lo, self.hi = 0, 0
        self.block: np.ndarray | None = None

    def rows(self, a: int, b: int) -> np.ndarray:
        if self.block is None or a < self.lo or b > self.hi:
            self.lo, self.hi = a, min(max(b, a + self.BLOCK_ROWS), self.ds.shape[0])
            self.block = self.ds[self.lo:self.hi]
        return self.block[a - self.lo:b - self.lo]


class MmsaSource:
    fmt = "mmsa"

    def __init__(self, path: Path, key: str | None = None, allow_pickle: bool = False):
        if not allow_pickle:
            raise InteropError(
                f"{path}: refusing to unpickle an MMSA feature file: unpickling runs code from the file. "
                "Pass --allow-pickle (allow_pickle=True) only for files you trust."
            )
        if not path.is_file():
            raise InteropError(f"{path}: file not found")
        if not key:
            raise InteropError(f"{path}: name the modality to import with --key (audio, vision or text)")
        if key == "text_bert":
            raise InteropError(f"{path}: 'text_bert' holds BERT token ids/masks, not features; import 'text' or extract bert")
        self.path, self.key = path, key
        with open(path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 - explicitly allowed by the caller
        if not isinstance(data, dict):
            raise InteropError(f"{path}: expected a dict of splits, got {type(data).__name__}")
        self.splits = {"all": data} if "id" in data else {k: v for k, v in data.items() if isinstance(v, dict) and "id" in v}
        if not self.splits:
            raise InteropError(f"{path}: no split with an 'id' list (keys: {', '.join(map(str, data))})")
        for name, split in self.splits.items():
            if key not in split:
                have = ", ".join(k for k, v in split.items() if isinstance(v, np.ndarray))
                raise InteropError(f"{path}: split {name!r} has no {key!r} (arrays: {have})")

    def digest(self) -> str:
        return file_digest([self.path])

    def entries(self) -> Iterator[Entry]:
        for name, split in self.splits.items():
            arr = np.asarray(split[self.key])
            ids = [str(x) for x in split["id"]]
            lengths = split.get(f"{self.key}_lengths")
            if len(ids) != arr.shape[0]:
                raise InteropError(f"{self.path}: split {name!r}: {len(ids)} ids but {self.key} has {arr.shape[0]} rows")
            if lengths is not None and len(lengths) != len(ids):
                raise InteropError(f"{self.path}: split {name!r}: {len(lengths)} {self.key}_lengths for {len(ids)} ids")
            for i, cid in enumerate(ids):
                if arr.ndim == 3 and lengths is not None:
                    n = int(lengths[i])
                    if not 0 <= n <= arr.shape[1]:
                        raise InteropError(f"{self.path}: split {name!r} clip {cid}: length {n} outside 0..{arr.shape[1]}")
                    shape: tuple[int, ...] = (n, arr.shape[2])
                else:
                    n = arr.shape[1] if arr.ndim == 3 else 0
                    shape = tuple(arr.shape[1:])
                yield Entry(cid, shape, arr.dtype,
                            lambda i=i, n=n, arr=arr: ((arr[i, :n] if arr.ndim == 3 else arr[i]), None))

    def close(self) -> None:
        pass


def open_source(fmt: str, path: str | os.PathLike[str], key: str | None = None, allow_pickle: bool = False):
    path = Path(path)
    if fmt == "npy":
        return NpySource(path)
    if fmt == "hdf5":
        return Hdf5Source(path, key)
    if fmt == "mmsa":
        return MmsaSource(path, key, allow_pickle)
    raise InteropError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
