"""Faces in frames: detect, keep the clip's main person, align by landmarks.

The detector is dlib's (the ``dlib-bin`` wheel): its frontal-face HOG detector
is compiled into the library, and the landmark models (5 and 68 points) and
the face descriptor model come from the ``face-recognition-models`` package, so
nothing is downloaded. dlib reads its own ``.dat`` format (no pickle); the
sha256 of each file used goes into the ``faces`` spec.

- :meth:`FaceDetector.detect`: every face of a frame: the detector's box
  ``(x0, y0, x1, y1)`` in frame pixels, 5 landmarks (the two corners of each
  eye, the bottom of the nose; dlib's order), the detector's score, and with
  ``landmarks68`` the 68 points of the iBUG 300-W scheme (jaw line, eyebrows,
  eyes, nose, mouth: OpenFace's ``x_0..x_67``), whose bounds are the face's
  box from chin to eyebrows and cheek to cheek (:func:`landmark_box`). The
  detector's own box is a square HOG window that stops above the chin.
- :func:`main_track`: which face of each frame is the clip's main person.
  Faces of consecutive sampled frames whose boxes overlap (IoU >= 0.3) are
  linked into tracklets. When there is more than one tracklet, each gets
  dlib's 128-d face descriptor (of its largest face: one descriptor per
  tracklet, not per face), tracklets closer than ``identity_threshold`` are one
  person (dlib's own threshold is 0.6), and the main person is the one whose
  faces cover the most area over the whole clip: the same person in every
  frame, not whoever is largest in each.
- :func:`align`: the aligned crop (``dlib.get_face_chip``: a similarity
  transform from the 5 landmarks that puts the eyes on one level at fixed
  places; ``padding`` is the margin around the face, as a fraction). 68-point
  landmarks (an OpenFace CSV) give the same 5 points (:data:`DLIB5_OF_68`), so
  crops aligned from them are aligned the same way.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import numpy as np

from clmer_features.errors import ModelNotFoundError

LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# trained by dlib on iBUG 300-W, whose licence excludes commercial use (dlib-models' README says so)
LANDMARKS68_FILE = "shape_predictor_68_face_landmarks.dat"
# dlib's 5 points in the 68-point (iBUG 300-W) numbering: one eye's outer and inner corner, the
# other eye's outer and inner corner, the bottom of the nose (checked: the two predictors agree within 1 px)
DLIB5_OF_68 = (45, 42, 36, 39, 33)


def models_folder() -> Path:
    """The ``face_recognition_models`` package's model folder (found without importing it: its
    ``__init__`` needs setuptools' pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("faces needs the face-recognition-models package (pip install clmer[extract])")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    for name in (LANDMARKS_FILE, DESCRIPTOR_FILE, LANDMARKS68_FILE):
        if not (folder / name).is_file():
            raise ModelNotFoundError(f"{folder}: face-recognition-models lacks {name}; reinstall it")
    return folder


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    st = path.stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def weights_files(landmarks68: bool) -> tuple[str, ...]:
    """The weight files a detector uses (the 68-point model only when it computes those)."""
    return (LANDMARKS_FILE, DESCRIPTOR_FILE) + ((LANDMARKS68_FILE,) if landmarks68 else ())


def weights_digest(landmarks68: bool = False) -> str:
    """sha256 (16 hex) over the weight files the detector uses, by name."""
    folder = models_folder()
    h = hashlib.sha256()
    for name in weights_files(landmarks68):
        h.update(f"{name}:{file_digest(folder / name)}\n".encode())
    return h.hexdigest()[:16]


def dlib_version() -> str:
    try:
        return version("dlib-bin")
    except PackageNotFoundError:
        import dlib

        return str(dlib.__version__)


def _load(loader: Callable[[str], Any], path: Path) -> Any:
    """A dlib model from its own .dat format (no pickle); a damaged file is one clear error."""
    try:
        return loader(str(path))
    except RuntimeError as exc:
        raise ModelNotFoundError(f"{path}: dlib cannot read it ({str(exc).strip().splitlines()[0]}); "
                                 f"reinstall face-recognition-models") from None


@dataclass
class Face:
    """One detected face: the detector's box (x0, y0, x1, y1), landmarks [5, 2] and, when asked
    for, landmarks68 [68, 2] in frame pixels; the detector's score."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    shape: Any = None  # dlib.full_object_detection, for descriptors
    landmarks68: np.ndarray | None = None

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))

    def eye_angle(self) -> float:
        """Degrees from the image's horizontal to the line from the left eye to the right eye."""
        return eye_angle(self.landmarks)


def eye_angle(landmarks: np.ndarray) -> float:
    """dlib's 5 points: 0-1 one eye's corners, 2-3 the other's, 4 the nose. Angle of the line between
    the eye centres, left to right in the image, in degrees (0 = level)."""
    p = np.asarray(landmarks, np.float64).reshape(5, 2)
    a, b = p[0:2].mean(axis=0), p[2:4].mean(axis=0)
    left, right = (a, b) if a[0] <= b[0] else (b, a)
    return float(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0])))


def landmark_box(points: np.ndarray) -> np.ndarray:
    """The box (x0, y0, x1, y1) around landmarks [n, 2]: for the 68 points, jaw line to eyebrows
    and cheek to cheek (the bounds, as the OpenFace import stores them)."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    return np.concatenate([p.min(axis=0), p.max(axis=0)])


def _points(shape: Any) -> np.ndarray:
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], np.float32)


class FaceDetector:
    """dlib's HOG detector + 5-point landmarks (+ 68-point landmarks with ``landmarks68``; + the
    face descriptor, loaded when first needed).

    ``upsample``: how many times the frame is doubled before detection (0 finds faces of about
    80 px and up; each step finds faces half as large, about 4x slower). ``min_score``: the
    detector's threshold adjustment (0 = dlib's default; higher keeps fewer, surer faces).
    """

    def __init__(self, upsample: int = 0, min_score: float = 0.0, landmarks68: bool = False):
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self.landmarks68 = bool(landmarks68)
        self._det: Any = None
        self._shape: Any = None
        self._shape68: Any = None
        self._desc: Any = None

    def load(self) -> None:
        if self._det is not None:
            return
        import dlib

        self._shape = _load(dlib.shape_predictor, models_folder() / LANDMARKS_FILE)
        if self.landmarks68:
            self._shape68 = _load(dlib.shape_predictor, models_folder() / LANDMARKS68_FILE)
        self._det = dlib.get_frontal_face_detector()

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Every face in one RGB uint8 frame [H, W, 3], best score first."""
        self.load()
        img = np.ascontiguousarray(frame, dtype=np.uint8)
        rects, scores, _ = self._det.run(img, self.upsample, self.min_score)
        faces = []
        for r, s in zip(rects, scores):
            shape = self._shape(img, r)
            box = np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], np.float32)
            faces.append(Face(box=box, landmarks=_points(shape), score=float(s), shape=shape,
                              landmarks68=_points(self._shape68(img, r)) if self._shape68 is not None else None))
        return sorted(faces, key=lambda f: -f.score)

    def descriptor(self, frame: np.ndarray, face: Face) -> np.ndarray:
        """dlib's 128-d face descriptor (faces of one person lie within ~0.6 of each other)."""
        import dlib

        if self._desc is None:
            self._desc = _load(dlib.face_recognition_model_v1, models_folder() / DESCRIPTOR_FILE)
        img = np.ascontiguousarray(frame, dtype=np.uint8)
        return np.asarray(self._desc.compute_face_descriptor(img, face.shape), np.float32)


def align(frame: np.ndarray, landmarks: np.ndarray, size: int, padding: float) -> np.ndarray:
    """The aligned crop [size, size, 3] uint8 (eyes level, at fixed places) from dlib's 5 points
    [5, 2] or the 68 points [68, 2] (their 5 eye-corner and nose points are used: the same
    alignment either way). Points are rounded to whole pixels, as dlib's own landmarks are."""
    import dlib

    p = np.asarray(landmarks, np.float64).reshape(-1, 2)
    if len(p) == 68:
        p = p[list(DLIB5_OF_68)]
    if len(p) != 5 or not np.isfinite(p).all():
        raise ValueError(f"align needs 5 or 68 finite landmarks, got {len(p)}")
    pts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in p])
    x0, y0 = np.floor(p.min(axis=0)).astype(int)
    x1, y1 = np.ceil(p.max(axis=0)).astype(int)
    shape = dlib.full_object_detection(dlib.rectangle(int(x0), int(y0), int(x1), int(y1)), pts)
    img = np.ascontiguousarray(frame, dtype=np.uint8)
    return np.asarray(dlib.get_face_chip(img, shape, size=int(size), padding=float(padding)), np.uint8)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    iy = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    inter = ix * iy
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union if union > 0 else 0.0


def tracklets(faces: list[list[Face]], link_iou: float = 0.3) -> list[list[tuple[int, int]]]:
    """Runs of (frame, face index): a face joins the run whose face in the previous frame overlaps
    it most (IoU >= ``link_iou``; each run and face taken once, best overlaps first)."""
    runs: list[list[tuple[int, int]]] = []
    open_runs: list[int] = []  # runs whose last face is in the previous frame
    for i, fs in enumerate(faces):
        pairs = sorted(((box_iou(faces[runs[r][-1][0]][runs[r][-1][1]].box, f.box), r, j)
                        for r in open_runs for j, f in enumerate(fs)), key=lambda p: -p[0])
        taken_r: set[int] = set()
        taken_f: set[int] = set()
        for v, r, j in pairs:
            if v < link_iou:
                break
            if r not in taken_r and j not in taken_f:
                runs[r].append((i, j))
                taken_r.add(r)
                taken_f.add(j)
        for j in range(len(fs)):
            if j not in taken_f:
                runs.append([(i, j)])
                taken_r.add(len(runs) - 1)
        open_runs = sorted(taken_r)
    return runs


def main_track(faces: list[list[Face]], describe: Callable[[int, Face], np.ndarray],
               identity_threshold: float = 0.6) -> list[int | None]:
    """Per frame, the index of the main person's face in ``faces[frame]`` (None: not in that frame).

    ``describe(frame_index, face)`` gives a face descriptor; it is called once per tracklet, and
    only when the clip has more than one (see the module doc).
    """
    runs = tracklets(faces)
    person = [0] * len(runs)
    if len(runs) > 1:
        people: list[list[np.ndarray]] = []
        for r, run in enumerate(runs):
            i, j = max(run, key=lambda ij: faces[ij[0]][ij[1]].area)
            d = describe(i, faces[i][j])
            dist = [float(np.min(np.linalg.norm(np.stack(p) - d, axis=1))) for p in people]
            k = int(np.argmin(dist)) if dist and min(dist) < identity_threshold else -1
            if k < 0:
                people.append([d])
                k = len(people) - 1
            else:
                people[k].append(d)
            person[r] = k
    area: dict[int, float] = {}
    for r, run in enumerate(runs):
        area[person[r]] = area.get(person[r], 0.0) + sum(faces[i][j].area for i, j in run)
    main = max(area, key=lambda k: area[k]) if area else 0
    out: list[int | None] = [None] * len(faces)
    for r, run in enumerate(runs):
        if person[r] != main:
            continue
        for i, j in run:
            if out[i] is None or faces[i][j].area > faces[i][out[i]].area:
                out[i] = j
    return out
