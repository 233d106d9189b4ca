"""A PyTorch dataset over the store, for your own models (and the built-in frame-level heads).

    from torch.utils.data import DataLoader
    from clmer_fusion.dataset import StoreDataset, collate
    from clmer_fusion.request import Request

    ds = StoreDataset(Request.create("clips.csv", "cache", ["emotion2vec", "siglip"]))
    for batch in DataLoader(ds, batch_size=32, shuffle=True, collate_fn=collate, num_workers=2):
        batch["x"]["emotion2vec"]      # [B, T, D] float32, zero padded
        batch["mask"]["emotion2vec"]   # [B, T] bool, True on real rows
        batch["times"]["emotion2vec"]  # [B, T] float32 seconds (None for a feature without times)
        batch["present"], batch["y"]   # [B, M] bool, [B] class index (or float value)

An item is one clip: its rows of every feature (aligned by clip id; a feature the clip lacks gives
zero rows and ``present`` False), their timestamps, and its label from the manifest (the manifest's
media are never opened). ``DataLoader(num_workers>0)`` works with fork (the default on Linux: the
dataset prepares its indexes and timestamps before, and an item is plain positioned reads) and
with spawn (the dataset pickles without its open store; each worker reopens it with the same
spec ids).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset

from clmer_features.errors import ClmerError


def _keep_index(n: int, max_frames: int | None) -> np.ndarray | None:
    """Rows kept from a sequence of ``n``: a uniform subsample over the whole span when too long."""
    if max_frames is None or n <= max_frames:
        return None
    return np.linspace(0, n - 1, max_frames).round().astype(np.int64)


def pad(seqs: Sequence[np.ndarray], dim: int, max_frames: int | None = None,
        dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Sequences ``[T_i, dim]`` (or ``[T_i]``) -> zero-padded ``[N, T, dim]`` and mask ``[N, T]``.

    A sequence longer than ``max_frames`` is subsampled uniformly (it keeps the clip's whole span).
    """
    lengths = [len(s) if max_frames is None else min(len(s), max_frames) for s in seqs]
    t = max(lengths + [1])
    shape = (len(seqs), t, dim) if dim else (len(seqs), t)
    out = np.zeros(shape, dtype)
    mask = np.zeros((len(seqs), t), bool)
    for i, s in enumerate(seqs):
        keep = _keep_index(len(s), max_frames)
        s = s if keep is None else s[keep]
        out[i, : len(s)] = s
        mask[i, : len(s)] = True
    return out, mask


class StoreDataset(Dataset):
    """Clips of a request's manifest with their frame rows of every feature and their targets.

    ``source``: a :class:`~clmer_fusion.request.Request` (or its resolved ``Sources``).
    ``clip_ids``: which clips (default: every clip with a target value, manifest order).
    ``missing``: "drop" keeps clips that have every feature, "embed" those with at least one,
    "keep" every clip asked for (default: the request's policy).
    """

    def __init__(self, source: Any, clip_ids: Sequence[str] | None = None, missing: str | None = None):
        from clmer_fusion.data import encode_labels
        from clmer_fusion.request import Sources, open_sources

        src = source if isinstance(source, Sources) else open_sources(source)
        req = src.request
        # a worker reopens the store with exactly these specs, without checking the media again
        self.request = dataclasses.replace(req, spec_ids=tuple(sorted(src.spec_ids.items())), check_fresh=False)
        self.features = list(req.features)
        df = src.labels
        if clip_ids is None:
            if req.target not in df.columns:
                raise ClmerError(f"{req.manifest}: no '{req.target}' column")
            clip_ids = df.filter(pl.col(req.target).is_not_null())["clip_id"].cast(pl.Utf8).to_list()
        ids = list(clip_ids)
        lengths = np.stack([src.readers[f].lengths(ids) for f in self.features], 1) if ids else \
            np.zeros((0, len(self.features)), np.int64)
        present = lengths > 0
        policy = missing or req.missing
        if policy not in ("drop", "embed", "keep"):
            raise ClmerError(f"missing must be 'drop', 'embed' or 'keep', not {policy!r}")
        keep = present.all(1) if policy == "drop" else present.any(1) if policy == "embed" else np.ones(len(ids), bool)
        self.clip_ids = [c for c, k in zip(ids, keep) if k]
        self.present = present[keep]
        self.dims = {f: src.readers[f].dim for f in self.features}
        rows = df.select("clip_id", *[c for c in ("label", "label_value") if c in df.columns])
        got = pl.DataFrame({"clip_id": self.clip_ids}, schema={"clip_id": pl.Utf8}).join(
            rows, on="clip_id", how="left", maintain_order="left")
        self.classes: list[str] = []
        if req.target == "label" and "label" in got.columns and got["label"].null_count() == 0:
            self.y, self.classes = encode_labels(got["label"].to_list())
            self.task = "classification"
        elif req.target in got.columns and got[req.target].null_count() == 0:
            self.y, self.task = got[req.target].cast(pl.Float32).to_numpy(), "regression"
        else:
            self.y, self.task = None, "none"
        self._src = src
        self._times: dict[str, list[np.ndarray] | None] | None = None
        self._prepare()

    def _prepare(self) -> None:
        """Everything an item needs that goes through polars or zarr, done here in this process:
        a forked DataLoader worker must not touch them (their thread pools do not survive a fork);
        items then read rows with plain positioned reads."""
        for f in self.features:
            len(self.sources.readers[f])               # the clip -> rows map
            self.sources.readers[f].dim
        self._times = self.read_times(range(len(self)))

    # --------------------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_src"] = state["_times"] = None
        return state

    @property
    def sources(self) -> Any:
        if self._src is None:
            from clmer_fusion.request import open_sources

            self._src = open_sources(self.request)
        return self._src

    # --------------------------------------------------------------------------- reads
    def __len__(self) -> int:
        return len(self.clip_ids)

    def read_rows(self, indices: Iterable[int]) -> dict[str, list[np.ndarray]]:
        """Rows (float32) of every feature for many clips, one batched read per feature."""
        idx = list(indices)
        out: dict[str, list[np.ndarray]] = {}
        for j, f in enumerate(self.features):
            have = [i for i in idx if self.present[i, j]]
            got = self.sources.readers[f].get_many([self.clip_ids[i] for i in have]) if have else []
            by = dict(zip(have, got))
            empty = np.zeros((0, self.dims[f]), np.float32)
            out[f] = [np.asarray(by[i], np.float32) if i in by else empty for i in idx]
        return out

    def read_times(self, indices: Iterable[int]) -> dict[str, list[np.ndarray] | None]:
        """Timestamps (seconds) of every feature's rows; None for a feature stored without times."""
        idx = list(indices)
        out: dict[str, list[np.ndarray] | None] = {}
        for j, f in enumerate(self.features):
            have = [i for i in idx if self.present[i, j]]
            got = self.sources.readers[f].times_many([self.clip_ids[i] for i in have]) if have else []
            if any(t is None for t in got):
                out[f] = None
                continue
            by = dict(zip(have, got))
            out[f] = [np.asarray(by[i], np.float32) if i in by else np.zeros(0, np.float32) for i in idx]
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._times is None:                          # unpickled in a spawned worker
            self._prepare()
        cid = self.clip_ids[i]
        x = {f: (np.asarray(self.sources.readers[f].get(cid), np.float32) if self.present[i, j]
                 else np.zeros((0, self.dims[f]), np.float32)) for j, f in enumerate(self.features)}
        return {
            "clip_id": cid,
            "x": x,
            "times": {f: (None if self._times[f] is None else self._times[f][i]) for f in self.features},
            "present": self.present[i],
            "y": None if self.y is None else self.y[i],
        }


def collate(items: Sequence[dict[str, Any]], max_frames: int | None = None) -> dict[str, Any]:
    """Items of :class:`StoreDataset` -> a padded batch of tensors with masks (see the module doc)."""
    feats = list(items[0]["x"])
    batch: dict[str, Any] = {"clip_id": [it["clip_id"] for it in items], "x": {}, "mask": {}, "times": {}}
    for f in feats:
        seqs = [it["x"][f] for it in items]
        vals, mask = pad(seqs, seqs[0].shape[-1] if seqs[0].ndim == 2 else 0, max_frames)
        batch["x"][f], batch["mask"][f] = torch.from_numpy(vals), torch.from_numpy(mask)
        times = [it["times"][f] for it in items]
        batch["times"][f] = None if any(t is None for t in times) else torch.from_numpy(pad(times, 0, max_frames)[0])
    batch["present"] = torch.from_numpy(np.stack([np.asarray(it["present"], bool) for it in items]))
    ys = [it["y"] for it in items]
    batch["y"] = None if any(y is None for y in ys) else torch.as_tensor(np.asarray(ys))
    return batch
