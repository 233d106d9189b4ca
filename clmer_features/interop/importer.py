"""Import features made by other tools into the store, as a normal, versioned feature.

The imported feature gets a spec like any extractor's: ``extractor`` is
``import:<format>``; its params hold what decides the numbers: the sha256 of
the source's content (``content_digest``), the dtype kept, ``layout``
(``vector``: one ``[D]`` per clip; ``sequence``: ``[T, D]``) and, for HDF5 and
MMSA, the ``key`` read. The source's name and path are *not* in the spec (a
renamed or moved copy of the same file is the same feature); they go in the
feature's provenance attrs (``provenance.import``). Values keep the source's
float dtype (so a round trip is exact); integer sources become float32.

Clip ids are matched to the manifest exactly, else in MMSA's form
(``video$_$clip`` -> ``video_clip``), else loosely (case and zero-padding, if
that is unique); loose matches, source clips not in the manifest, and manifest
clips the source lacks are all counted in the summary, never dropped silently.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clmer_features.interop.formats import Entry, InteropError, open_source
from clmer_features.manifest import Manifest, read_manifest
from clmer_features.recipes.common import loose_stem
from clmer_features.spec import FeatureSpec
from clmer_features.store import open_store, part_name

MAX_LISTED = 10


@dataclass
class ImportSummary:
    feature: str
    spec_id: str
    fmt: str
    source: str
    layout: str
    dtype: str
    dim: int
    imported: int = 0
    already: int = 0
    failed: int = 0
    loose: list[tuple[str, str]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    no_key: list[str] = field(default_factory=list)
    not_in_source: int = 0
    store: str = ""
    other_specs: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [
            f"imported {self.imported} clips into {self.feature}/{self.spec_id} ({self.layout}, {self.dtype}, D={self.dim}) "
            f"from {self.fmt} {self.source}",
            f"  store: {self.store}",
            f"  already in store: {self.already}; failed (non-finite values): {self.failed}",
            f"  manifest clips not in the source: {self.not_in_source}",
        ]
        for what, items in (("source ids matched loosely", [f"{a} -> {b}" for a, b in self.loose]),
                            ("source ids not in the manifest (skipped)", self.unmatched),
                            ("clips without a cache key for this input (skipped)", self.no_key)):
            if items:
                shown = ", ".join(items[:MAX_LISTED]) + (f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")
                lines.append(f"  {what}: {len(items)}: {shown}")
        if self.other_specs:
            lines.append(f"  note: {self.feature} also holds spec(s) {', '.join(self.other_specs)}; readers must name "
                         f"spec_id={self.spec_id}, or remove the old ones with `clmer-features gc --superseded`")
        return "\n".join(lines)


def _match_ids(source_ids: list[str], manifest_ids: list[str]) -> tuple[dict[str, str], list[tuple[str, str]], list[str]]:
    """source id -> manifest id; plus the loose matches and the unmatched source ids."""
    exact = set(manifest_ids)
    loose: dict[str, list[str]] = {}
    for cid in manifest_ids:
        loose.setdefault(loose_stem(cid), []).append(cid)
    out: dict[str, str] = {}
    loose_hits: list[tuple[str, str]] = []
    unmatched: list[str] = []
    taken: set[str] = set()
    claimed = exact.intersection(source_ids)  # manifest ids some source id matches exactly
    for sid in source_ids:
        mmsa = sid.replace("$_$", "_")
        if sid in exact and sid not in taken:
            target: str | None = sid
        elif mmsa != sid and mmsa in exact and mmsa not in taken and mmsa not in claimed:
            target = mmsa  # MMSA's "video$_$clip" form of our "video_clip": expected, not a mismatch
        else:
            target = None
            for cand in dict.fromkeys((mmsa, sid, sid.rsplit("/", 1)[-1])):  # last: a nested file's name
                group = loose.get(loose_stem(cand), [])  # must be unambiguous in the whole manifest
                if len(group) == 1 and group[0] not in taken and group[0] not in claimed:
                    target = group[0]
                    loose_hits.append((sid, target))
                    break
        if target is None:
            unmatched.append(sid)
        else:
            out[sid] = target
            taken.add(target)
    return out, loose_hits, unmatched


def _layout(entries: list[Entry], where: str) -> tuple[str, int, np.dtype]:
    ndims = {len(e.shape) for e in entries}
    bad = next((e for e in entries if len(e.shape) not in (1, 2)), None)
    if bad is not None:
        raise InteropError(f"{where}: clip {bad.clip_id!r} has shape {bad.shape}; expected [T, D] or [D]")
    dims = {e.shape[-1] for e in entries if not (len(e.shape) == 2 and e.shape[0] == 0)}  # [0, ?] fits any D
    if len(dims) > 1:
        first = {d: next(e.clip_id for e in entries if e.shape[-1] == d) for d in sorted(dims)}
        raise InteropError(f"{where}: clips have different widths: " + ", ".join(f"D={d} (e.g. {c!r})" for d, c in first.items()))
    dtype = np.result_type(*{e.dtype for e in entries})
    if dtype.kind != "f":
        dtype = np.dtype("float32")
    return ("vector" if ndims == {1} else "sequence"), (dims.pop() if dims else 0), dtype


def import_features(
    fmt: str,
    source: str | os.PathLike[str],
    manifest: Manifest | str | os.PathLike[str],
    feature: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    key: str | None = None,
    allow_pickle: bool = False,
    model_id: str = "",
    input: str | None = None,
    part_size: int = 1000,
    progress: bool = True,
) -> ImportSummary:
    """Import a feature file/folder for the clips of ``manifest`` and finalize it in the store."""
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest, dataset=dataset)
    src_path = Path(source).resolve()
    src = open_source(fmt, src_path, key=key, allow_pickle=allow_pickle)
    try:
        entries = list(src.entries())
        where = str(src_path)
        if not entries:
            raise InteropError(f"{where}: no clips")
        seen: set[str] = set()
        for e in entries:
            if e.clip_id in seen:
                raise InteropError(f"{where}: clip id {e.clip_id!r} appears twice")
            seen.add(e.clip_id)
        layout, dim, dtype = _layout(entries, where)

        if input is None:
            input = "media" if m.df["media_key"].is_not_null().any() else "text"
        if input not in ("media", "text"):
            raise InteropError(f"input must be 'media' or 'text', not {input!r}")
        keys = dict(zip(m.df["clip_id"].to_list(), m.keys(input)))
        mapping, loose, unmatched = _match_ids([e.clip_id for e in entries], list(keys))

        params: dict[str, Any] = {"content_digest": src.digest(), "dtype": dtype.name, "layout": layout}
        if key:
            params["key"] = key
        spec = FeatureSpec.create(feature, extractor=f"import:{fmt}", model_id=model_id, params=params)
        store = open_store(cache_dir, dataset or m.dataset, create=True)
        store.write_clips(m)
        imported = {"format": fmt, "source_name": src_path.name, "source_path": str(src_path), "key": key,
                    "content_digest": params["content_digest"],
                    "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        fw = store.feature_writer(spec, input=input, provenance={"import": imported})

        summary = ImportSummary(feature, spec.spec_id, fmt, str(src_path), layout, dtype.name, dim,
                                loose=loose, unmatched=unmatched, store=str(fw.dir))
        done = fw.done_keys()
        todo: list[tuple[Entry, str, str]] = []
        for e in entries:
            cid = mapping.get(e.clip_id)
            if cid is None:
                continue
            ck = keys[cid]
            if ck is None:
                summary.no_key.append(cid)
            elif ck in done:
                summary.already += 1
            else:
                todo.append((e, cid, ck))
        summary.not_in_source = len(keys) - len(mapping)

        bar = tqdm(total=len(todo), desc=f"import {feature}", unit="clip", disable=not progress)
        for start in range(0, len(todo), part_size):
            chunk = todo[start:start + part_size]
            with fw.part(part_name([ck for _, _, ck in chunk], prefix="import")) as part:
                for e, cid, ck in chunk:
                    values, times = e.load()
                    values = np.asarray(values).astype(dtype, copy=False)
                    if values.ndim == 2 and values.shape[0] == 0:
                        values = np.zeros((0, dim), dtype)
                    if not np.isfinite(values).all():
                        part.fail(ck, cid, "import", "NonFinite", f"{e.clip_id}: values contain NaN or inf")
                        summary.failed += 1
                        continue
                    part.add(ck, cid, values, times=times)
                    summary.imported += 1
                    bar.update(1)
        bar.close()
        fw.finalize()
        summary.other_specs = [st.spec_id for st in store.specs(feature) if st.spec_id != spec.spec_id]
        return summary
    finally:
        src.close()
