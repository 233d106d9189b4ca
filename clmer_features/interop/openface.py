"""Import OpenFace outputs as the ``faces`` feature, so crops made once with OpenFace are kept.

Layout read (MERTools' ``openface_face`` folder): one folder per video,
``ROOT/<video>/``, holding

- ``<video>.npy``: the aligned faces OpenFace saved, ``[N, S, S, 3]`` uint8 in
  OpenCV's BGR order (MERTools stacks OpenFace's ``<video>_aligned`` images so);
  stored as RGB, like the faces clmer detects;
- optionally ``<video>.csv``: OpenFace ``FeatureExtraction``'s table (``frame,
  face_id, timestamp, confidence, success, ..., x_0..x_67, y_0..y_67``; header
  names may carry a leading space). Its rows with ``success == 1`` are the
  frames the crops came from, in order: they give each crop its time, its 68
  landmarks (and the box around them) and OpenFace's confidence; the other rows
  are frames without a face. Without a CSV the crops have no times (NaN).

The feature gets a spec like any import (``extractor=import:openface``, the
sha256 of the files' content, the crop size); a clip's video folder missing
from ROOT, or whose CSV and array disagree, is reported, never guessed.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clmer_features.interop.formats import InteropError, file_digest
from clmer_features.manifest import Manifest, read_manifest
from clmer_features.spec import FeatureSpec
from clmer_features.store import open_store, part_name


@dataclass
class OpenFaceSummary:
    spec_id: str
    size: int
    imported: int = 0
    already: int = 0
    no_face: list[str] = field(default_factory=list)
    without_csv: list[str] = field(default_factory=list)
    not_in_source: list[str] = field(default_factory=list)
    store: str = ""

    def text(self) -> str:
        def listed(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f", ... ({len(items) - 10} more)" if len(items) > 10 else "")

        lines = [f"imported {self.imported} clips into faces/{self.spec_id} (OpenFace crops {self.size}x{self.size})",
                 f"  store: {self.store}", f"  already in store: {self.already}"]
        for what, items in (("clips with no face (absent)", self.no_face),
                            ("clips without a CSV (crops have no times or landmarks)", self.without_csv),
                            ("manifest clips with no folder in the source", self.not_in_source)):
            if items:
                lines.append(f"  {what}: {len(items)}: {listed(items)}")
        return "\n".join(lines)


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    import polars as pl

    try:
        df = pl.read_csv(path, infer_schema_length=1000)
    except Exception as exc:  # noqa: BLE001 - polars raises several kinds for a bad table
        raise InteropError(f"{path}: not an OpenFace CSV ({str(exc).splitlines()[0]})") from None
    df = df.rename({c: c.strip() for c in df.columns})
    need = ["timestamp", "confidence", "success"] + [f"{a}_{i}" for i in range(68) for a in ("x", "y")]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise InteropError(f"{path}: not an OpenFace FeatureExtraction CSV: no column {missing[0]!r}")
    if "face_id" in df.columns and df["face_id"].n_unique() > 1:
        df = df.filter(pl.col("face_id") == df["face_id"].min())  # the first face OpenFace tracked
    xs = df.select([f"x_{i}" for i in range(68)]).to_numpy().astype(np.float64)
    ys = df.select([f"y_{i}" for i in range(68)]).to_numpy().astype(np.float64)
    return {"timestamp": df["timestamp"].to_numpy().astype(np.float64),
            "confidence": df["confidence"].to_numpy().astype(np.float64),
            "success": df["success"].to_numpy().astype(np.int64) == 1,
            "landmarks": np.stack([xs, ys], axis=2)}  # [frames, 68, 2]


def _clip(folder: Path, name: str) -> tuple[np.ndarray, dict[str, Any] | None, np.ndarray | None, list[Path]]:
    """(crops [N, S, S, 3] RGB, record or None, times or None, files read) of one video folder."""
    npy = folder / f"{name}.npy"
    if not npy.is_file():
        raise InteropError(f"{folder}: no {name}.npy (MERTools' array of OpenFace's aligned faces)")
    try:
        arr = np.load(npy, allow_pickle=False)
    except ValueError as exc:
        raise InteropError(f"{npy}: not a plain numeric .npy array ({exc})") from None
    if arr.ndim != 4 or arr.shape[3] != 3 or arr.shape[1] != arr.shape[2] or arr.dtype != np.uint8:
        if not (arr.ndim == 1 and arr.shape[0] == 0):
            raise InteropError(f"{npy}: expected [N, S, S, 3] uint8 BGR faces, got {arr.dtype} {arr.shape}")
    rgb = arr[..., ::-1] if arr.ndim == 4 else arr.reshape(0, 0, 0, 3)
    csv = folder / f"{name}.csv"
    if not csv.is_file():
        return rgb, None, None, [npy]
    t = _read_csv(csv)
    ok = np.flatnonzero(t["success"])
    if len(ok) != len(rgb):
        raise InteropError(f"{csv}: {len(ok)} frames with success=1 but {npy.name} holds {len(rgb)} faces")
    lm = t["landmarks"][ok]
    record = {
        "width": None, "height": None,
        "sampled_times": [float(x) for x in t["timestamp"]],
        "face": [bool(x) for x in t["success"]],
        "faces_seen": [int(x) for x in t["success"]],
        "boxes": [[float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())]
                  for p in lm],
        "landmarks": [[float(v) for v in p.reshape(-1)] for p in lm],
        "scores": [float(x) for x in t["confidence"][ok]],
    }
    return rgb, record, t["timestamp"][ok].astype(np.float32), [npy, csv]


def import_openface(source: str | os.PathLike[str], manifest: Manifest | str | os.PathLike[str], *,
                    cache_dir: str | os.PathLike[str] | None = None, dataset: str | None = None,
                    part_size: int = 256) -> OpenFaceSummary:
    """Import ``source`` (one OpenFace folder per video, named by clip id) as the ``faces`` feature
    of the manifest's clips, and finalize it."""
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest, dataset=dataset)
    root = Path(source).resolve()
    if not root.is_dir():
        raise InteropError(f"{root}: not a folder (expected one OpenFace folder per video)")
    keys = dict(zip(m.df["clip_id"].to_list(), m.keys("media")))
    todo = {cid: root / cid for cid in keys if (root / cid).is_dir()}
    if not todo:
        raise InteropError(f"{root}: no folder named after a clip id of the manifest")
    files = sorted(p for d in todo.values() for p in d.iterdir() if p.suffix in (".npy", ".csv"))
    sizes = set()
    for d in todo.values():
        npy = d / f"{d.name}.npy"
        if npy.is_file():
            shape = np.load(npy, mmap_mode="r", allow_pickle=False).shape
            if len(shape) == 4 and shape[0] > 0:
                sizes.add(int(shape[1]))
    if len(sizes) != 1:
        raise InteropError(f"{root}: the crops must have one size, found {sorted(sizes) or 'none'}")
    size = sizes.pop()
    spec = FeatureSpec.create("faces", extractor="import:openface", model_id="OpenFace", format_version=1,
                              params={"content_digest": file_digest(files, root), "dtype": "uint8", "size": size,
                                      "color": "RGB (from OpenFace's BGR)"})
    store = open_store(cache_dir, dataset or m.dataset, create=True)
    store.write_clips(m)
    fw = store.feature_writer(spec, input="media", provenance={"import": {
        "format": "openface", "source_path": str(root), "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime())}})
    summary = OpenFaceSummary(spec.spec_id, size, store=str(fw.dir),
                              not_in_source=[c for c in keys if c not in todo])
    done = fw.done_keys()
    pending = [(cid, keys[cid]) for cid in todo if keys[cid] is not None]
    summary.already = sum(1 for _, k in pending if k in done)
    pending = [(c, k) for c, k in pending if k not in done]
    for start in range(0, len(pending), part_size):
        chunk = pending[start:start + part_size]
        with fw.part(part_name([k for _, k in chunk], prefix="openface")) as part:
            for cid, key in chunk:
                rgb, record, times, _ = _clip(todo[cid], cid)
                if len(rgb) == 0:
                    part.fail(key, cid, "import", "NoFace", f"{cid}: OpenFace found no face", kind="absent")
                    summary.no_face.append(cid)
                    continue
                if record is None:
                    summary.without_csv.append(cid)
                    record = {"width": None, "height": None, "sampled_times": [], "face": [], "faces_seen": [],
                              "boxes": [], "landmarks": [], "scores": []}
                part.add_record(key, cid, record, values=rgb.reshape(len(rgb), -1), times=times)
                summary.imported += 1
    fw.finalize()
    return summary
