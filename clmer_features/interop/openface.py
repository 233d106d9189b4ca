"""Import OpenFace outputs as the ``faces`` feature, so users who ran OpenFace keep its work.

Two layouts, one folder ``ROOT`` for all clips:

- **OpenFace's crops** (MERTools' ``openface_face`` folder): one folder per
  video, ``ROOT/<video>/``, holding ``<video>.npy``: the aligned faces OpenFace
  saved, ``[N, S, S, 3]`` uint8 in OpenCV's BGR order (MERTools stacks
  OpenFace's ``<video>_aligned`` images so), stored as RGB like the faces clmer
  detects; optionally ``<video>.csv`` beside it: its rows with ``success == 1``
  are the frames the crops came from, in order, and give each crop its time,
  its 68 landmarks (and the box around them) and OpenFace's confidence; the
  other rows are frames without a face. Without a CSV the crops have no times.
- **CSVs only** (no ``.npy`` anywhere): ``ROOT/<video>.csv`` (OpenFace's own
  ``-out_dir`` layout) or ``ROOT/<video>/<video>.csv``. The crops are made from
  the manifest's videos: each ``success == 1`` row's frame (the one shown at
  its ``timestamp``) is aligned by the row's landmarks exactly as the ``faces``
  feature aligns (``dlib.get_face_chip`` on the 5 eye-corner and nose points,
  :data:`clmer_features.face_detect.DLIB5_OF_68` of the 68; ``size`` and
  ``padding`` as the faces parameters); the record is the faces feature's
  (times, ``face`` per row, box around the 68 landmarks, the 5 points,
  ``landmarks68``, confidence as the score); ``success == 0`` rows are frames
  without a face. A video that cannot be decoded, or that the CSV's times run
  past, is an error for that clip.

The CSV is OpenFace ``FeatureExtraction``'s table (``frame, face_id, timestamp,
confidence, success, ..., x_0..x_67, y_0..y_67``; header names may carry a
leading space); with several ``face_id`` the first face is kept. Every CSV is
checked before anything is written: a malformed one is one line naming the
file, the row and the column.

The feature gets a spec like any import (``extractor=import:openface``, the
sha256 of the files' content, the crop size; for CSVs also the padding and the
alignment); a clip missing from ROOT, or whose CSV and array disagree, is
reported, never guessed.
"""
from __future__ import annotations

import csv
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

LANDMARK_COLUMNS = [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]


@dataclass
class OpenFaceSummary:
    spec_id: str
    size: int
    from_videos: bool = False
    imported: int = 0
    already: int = 0
    no_face: list[str] = field(default_factory=list)
    without_csv: list[str] = field(default_factory=list)
    not_in_source: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "clip: why"
    store: str = ""

    def text(self) -> str:
        def listed(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f", ... ({len(items) - 10} more)" if len(items) > 10 else "")

        how = "aligned from the videos by OpenFace's CSV landmarks" if self.from_videos else "OpenFace crops"
        lines = [f"imported {self.imported} clips into faces/{self.spec_id} ({how}, {self.size}x{self.size})",
                 f"  store: {self.store}", f"  already in store: {self.already}"]
        for what, items in (("clips with no face (absent)", self.no_face),
                            ("clips without a CSV (crops have no times or landmarks)", self.without_csv),
                            ("manifest clips with no folder or CSV in the source", self.not_in_source)):
            if items:
                lines.append(f"  {what}: {len(items)}: {listed(items)}")
        if self.failed:
            lines.append(f"  clips that failed (recorded as errors): {len(self.failed)}")
            lines += [f"    {f}" for f in self.failed[:10]]
        return "\n".join(lines)


@dataclass
class OpenFaceTable:
    """One face's rows of an OpenFace CSV, in time order."""

    timestamp: np.ndarray  # [rows] seconds
    confidence: np.ndarray  # [rows]
    success: np.ndarray  # [rows] bool
    landmarks: np.ndarray  # [rows, 68, 2] (NaN where success is 0 and OpenFace left them out)


def read_openface_csv(path: Path) -> OpenFaceTable:
    """Read and check an OpenFace FeatureExtraction CSV; InteropError (one line: file, row, column)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise InteropError(f"{path}: empty, not an OpenFace CSV")
        names = [h.strip() for h in header]
        col = {n: i for i, n in enumerate(names)}
        missing = [c for c in ["timestamp", "confidence", "success", *LANDMARK_COLUMNS] if c not in col]
        if missing:
            raise InteropError(f"{path}: not an OpenFace FeatureExtraction CSV: no column {missing[0]!r}")
        lm_at = [col[c] for c in LANDMARK_COLUMNS]
        face_at = col.get("face_id")
        rows: list[tuple[int, float, float, bool, float, np.ndarray]] = []
        for row_no, row in enumerate(reader, start=1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            where = f"{path}: row {row_no} (line {reader.line_num})"
            if len(row) != len(names):
                raise InteropError(f"{where}: {len(row)} fields, the header has {len(names)}")

            def number(name: str, i: int | None = None) -> float:
                text = row[col[name] if i is None else i].strip()
                try:
                    v = float(text)
                except ValueError:
                    raise InteropError(f"{where}, column {name!r}: {text!r} is not a number") from None
                if not np.isfinite(v):
                    raise InteropError(f"{where}, column {name!r}: {text!r} is not a finite number")
                return v

            ok = number("success")
            if ok not in (0.0, 1.0):
                raise InteropError(f"{where}, column 'success': {row[col['success']].strip()!r} is not 0 or 1")
            t = number("timestamp")
            if t < 0:
                raise InteropError(f"{where}, column 'timestamp': negative time {t:g}")
            face = number("face_id", face_at) if face_at is not None else 0.0
            if ok:
                pts = np.array([number(n, i) for n, i in zip(LANDMARK_COLUMNS, lm_at)], np.float64)
            else:
                pts = np.full(136, np.nan)
            rows.append((row_no, face, t, bool(ok), number("confidence") if ok else 0.0, pts))
    if not rows:
        return OpenFaceTable(np.zeros(0), np.zeros(0), np.zeros(0, bool), np.zeros((0, 68, 2)))
    first = min(r[1] for r in rows)  # several faces (FaceLandmarkVidMulti): the first OpenFace tracked
    rows = [r for r in rows if r[1] == first]
    for prev, r in zip(rows, rows[1:]):
        if r[2] <= prev[2]:
            raise InteropError(f"{path}: row {r[0]}, column 'timestamp': {r[2]:g} does not come after the "
                               f"previous row's {prev[2]:g}")
    pts = np.stack([r[5] for r in rows])
    return OpenFaceTable(timestamp=np.array([r[2] for r in rows]), confidence=np.array([r[4] for r in rows]),
                         success=np.array([r[3] for r in rows], bool),
                         landmarks=np.stack([pts[:, :68], pts[:, 68:]], axis=2))


def _bgr_crops(npy: Path) -> np.ndarray:
    """MERTools' array of OpenFace's aligned faces as RGB [N, S, S, 3] (an empty array: no face)."""
    try:
        arr = np.load(npy, allow_pickle=False)
    except ValueError as exc:
        raise InteropError(f"{npy}: not a plain numeric .npy array ({exc})") from None
    if arr.ndim != 4 or arr.shape[3] != 3 or arr.shape[1] != arr.shape[2] or arr.dtype != np.uint8:
        if not (arr.ndim == 1 and arr.shape[0] == 0):
            raise InteropError(f"{npy}: expected [N, S, S, 3] uint8 BGR faces, got {arr.dtype} {arr.shape}")
    return arr[..., ::-1] if arr.ndim == 4 else arr.reshape(0, 0, 0, 3)


def _check_counts(npy: Path, csv_path: Path, table: OpenFaceTable) -> None:
    shape = np.load(npy, mmap_mode="r", allow_pickle=False).shape
    n = shape[0] if len(shape) == 4 else 0
    if int(table.success.sum()) != n:
        raise InteropError(f"{csv_path}: {int(table.success.sum())} frames with success=1 but {npy.name} holds "
                           f"{n} faces")


def _record(table: OpenFaceTable, landmarks5: bool) -> dict[str, Any]:
    """The faces record of a table: every row's time and whether it had the face; per face row the
    box around the 68 landmarks, the landmarks, OpenFace's confidence. ``landmarks5``: the faces
    feature's layout (the 5 aligning points, and the 68 as ``landmarks68``); else the 68 as ``landmarks``."""
    from clmer_features.face_detect import DLIB5_OF_68, landmark_box

    lm = table.landmarks[table.success]
    rec: dict[str, Any] = {
        "width": None, "height": None,
        "sampled_times": [float(x) for x in table.timestamp],
        "face": [bool(x) for x in table.success],
        "faces_seen": [int(x) for x in table.success],
        "boxes": [[float(v) for v in landmark_box(p)] for p in lm],
        "landmarks": [[float(v) for v in (p[list(DLIB5_OF_68)] if landmarks5 else p).reshape(-1)] for p in lm],
        "scores": [float(x) for x in table.confidence[table.success]],
    }
    if landmarks5:
        rec["landmarks68"] = [[float(v) for v in p.reshape(-1)] for p in lm]
    return rec


def _crops_clip(folder: Path, name: str) -> tuple[np.ndarray, dict[str, Any] | None, np.ndarray | None]:
    """(crops [N, S, S, 3] RGB, record or None, times or None) of one MERTools video folder."""
    if not (folder / f"{name}.npy").is_file():
        raise InteropError(f"{folder}: no {name}.npy (MERTools' array of OpenFace's aligned faces)")
    rgb = _bgr_crops(folder / f"{name}.npy")
    csv_path = folder / f"{name}.csv"
    if not csv_path.is_file():
        return rgb, None, None
    table = read_openface_csv(csv_path)
    record = _record(table, landmarks5=False)
    return rgb, record, table.timestamp[table.success].astype(np.float32)


def _aligned_clip(video: str, table: OpenFaceTable, size: int, padding: float
                  ) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """(crops [N, size, size, 3] RGB aligned from the video by the table's landmarks, record, times)."""
    from clmer_features.face_detect import align
    from clmer_features.media import frames_at

    ok = np.flatnonzero(table.success)
    times = table.timestamp[ok]
    crops = np.zeros((len(ok), size, size, 3), np.uint8)
    h = w = 0
    for pos, frames in frames_at(video, times):
        h, w = frames.shape[1:3]
        for k, fr in zip(pos, frames):
            crops[k] = align(fr, table.landmarks[ok[k]], size, padding)
    record = _record(table, landmarks5=True)
    record["width"], record["height"] = int(w), int(h)
    return crops, record, times.astype(np.float32)


def _sources(root: Path, clip_ids: list[str]) -> tuple[dict[str, Path], dict[str, Path]]:
    """Per clip: its MERTools folder (ROOT/<clip>/ with a .npy), or else its CSV (ROOT/<clip>.csv or
    ROOT/<clip>/<clip>.csv). Refuses a mix: OpenFace's crops and crops made here are not one feature."""
    folders: dict[str, Path] = {}
    csvs: dict[str, Path] = {}
    for cid in clip_ids:
        d = root / cid
        if (d / f"{cid}.npy").is_file():
            folders[cid] = d
        elif (d / f"{cid}.csv").is_file():
            csvs[cid] = d / f"{cid}.csv"
        elif (root / f"{cid}.csv").is_file():
            csvs[cid] = root / f"{cid}.csv"
        elif d.is_dir():
            folders[cid] = d  # a clip folder without its array: reported when read
    if folders and csvs:
        raise InteropError(f"{root}: {len(folders)} clips have OpenFace's aligned faces (e.g. {next(iter(folders))}) "
                           f"and {len(csvs)} only a CSV (e.g. {next(iter(csvs))}); crops made by OpenFace and crops "
                           f"aligned here are not one feature: import them from separate folders")
    return folders, csvs


def import_openface(source: str | os.PathLike[str], manifest: Manifest | str | os.PathLike[str], *,
                    cache_dir: str | os.PathLike[str] | None = None, dataset: str | None = None,
                    size: int | None = None, padding: float | None = None, part_size: int = 256,
                    progress: bool = True) -> OpenFaceSummary:
    """Import ``source`` (see the module doc) as the ``faces`` feature of the manifest's clips, and
    finalize it. ``size``/``padding``: the crops made from the videos when only CSVs are given
    (default: the faces feature's, 112 and 0.25)."""
    from tqdm import tqdm

    from clmer_features import face_detect as FD
    from clmer_features.extractors.faces import FacesConfig

    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest, dataset=dataset)
    root = Path(source).resolve()
    if not root.is_dir():
        raise InteropError(f"{root}: not a folder (expected OpenFace's outputs, one per video)")
    keys = dict(zip(m.df["clip_id"].to_list(), m.keys("media")))
    folders, csvs = _sources(root, list(keys))
    if not folders and not csvs:
        raise InteropError(f"{root}: no folder or CSV named after a clip id of the manifest")
    from_videos = bool(csvs)
    if not from_videos and (size is not None or padding is not None):
        raise InteropError(f"{root}: holds OpenFace's own crops; size and padding only apply to crops aligned "
                           f"from the videos (a source of CSVs only)")
    tables: dict[str, Path] = {cid: d / f"{cid}.csv" for cid, d in folders.items() if (d / f"{cid}.csv").is_file()}
    tables.update(csvs)
    for cid, p in tables.items():  # every CSV checked before anything is written
        table = read_openface_csv(p)
        if not from_videos and (folders[cid] / f"{cid}.npy").is_file():
            _check_counts(folders[cid] / f"{cid}.npy", p, table)
    if from_videos:
        rows = m.df.filter(m.df["clip_id"].is_in(list(csvs))).select("clip_id", "video", "start", "end").to_dicts()
        videos = {r["clip_id"]: r["video"] for r in rows}
        cut = [r["clip_id"] for r in rows if r["start"] is not None or r["end"] is not None]
        if cut:
            raise InteropError(f"{m.path}: clip {cut[0]!r} has start/end; OpenFace CSV times are times in the "
                               f"video file: give each clip its own file to align crops from CSVs")
        d = FacesConfig()
        size = int(size if size is not None else d.size)
        padding = float(padding if padding is not None else d.padding)
        if size < 16 or padding < 0:
            raise InteropError(f"size must be >= 16 and padding >= 0, not {size} and {padding:g}")
        spec = FeatureSpec.create(
            "faces", extractor="import:openface", model_id="OpenFace landmarks", format_version=1,
            params={"content_digest": file_digest(sorted(csvs.values()), root), "dtype": "uint8", "size": size,
                    "padding": padding, "align": "dlib.get_face_chip", "dlib": FD.dlib_version(),
                    "crops": "aligned from the videos by 5 of the CSV's 68 landmarks", "box": "landmarks",
                    "color": "RGB"})
    else:
        files = sorted(p for d in folders.values() for p in d.iterdir() if p.suffix in (".npy", ".csv"))
        sizes = set()
        for d in folders.values():
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
        "format": "openface" + (" CSV + videos" if from_videos else ""), "source_path": str(root),
        "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}})
    todo = csvs if from_videos else folders
    summary = OpenFaceSummary(spec.spec_id, size, from_videos, store=str(fw.dir),
                              not_in_source=[c for c in keys if c not in todo])
    done = fw.done_keys()
    pending = [(cid, keys[cid]) for cid in todo if keys[cid] is not None]
    summary.already = sum(1 for _, k in pending if k in done)
    pending = [(c, k) for c, k in pending if k not in done]
    bar = tqdm(total=len(pending), desc="import faces", unit="clip", disable=not progress)
    for start in range(0, len(pending), part_size):
        chunk = pending[start:start + part_size]
        with fw.part(part_name([k for _, k in chunk], prefix="openface")) as part:
            for cid, key in chunk:
                bar.update(1)
                if from_videos:
                    table = read_openface_csv(csvs[cid])
                    if not videos.get(cid):
                        part.fail(key, cid, "import", "NoVideo", f"{cid}: the manifest gives no video")
                        summary.failed.append(f"{cid}: the manifest gives no video")
                        continue
                    if not table.success.any():
                        rgb = np.zeros((0, size, size, 3), np.uint8)
                    else:
                        try:
                            rgb, record, times = _aligned_clip(videos[cid], table, size, padding)
                        except Exception as exc:  # noqa: BLE001 - one clip's video, recorded, the rest go on
                            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                            part.fail(key, cid, "import", type(exc).__name__, f"{videos[cid]}: {why}")
                            summary.failed.append(f"{cid}: {videos[cid]}: {why}")
                            continue
                else:
                    rgb, record, times = _crops_clip(todo[cid], cid)
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
    bar.close()
    fw.finalize()
    return summary
