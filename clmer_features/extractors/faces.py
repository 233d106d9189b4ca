"""The ``faces`` feature: the clip's main face, aligned, in every sampled frame.

Frames are sampled as the vision features sample them (one every
``frame_interval`` seconds, or the middle frames of ``frame_count`` segments),
so a run that asks for faces and clip decodes them once. In each frame
:mod:`clmer_features.face_detect` finds the faces, keeps the main person's
(tracked across the clip: the same person, not the largest face of each frame)
and aligns it by its landmarks.

Stored per clip:

- ``values``: one row per frame in which the main face was found, the aligned
  RGB crop ``size x size x 3`` as uint8, flattened (``crops(rows, size)``
  gives them back as images), with the frame's time;
- a record: the frame size, every sampled frame's time and whether it had the
  face (``face``), how many faces each frame showed, and per row the box
  ``(x0, y0, x1, y1)``, the 5 landmarks ``(x, y) * 5`` the crop was aligned by,
  in frame pixels, the detector's score and, with ``box=landmarks``, the 68
  landmarks ``(x, y) * 68`` (``landmarks68``; OpenFace's ``x_0..x_67`` scheme).

The box (``box`` parameter): ``landmarks`` (the default) is the box around the
68 landmarks: jaw line to eyebrows, cheek to cheek, the face whatever the
detector's window, and what the OpenFace import stores. ``detector`` is dlib's
HOG window: square, in steps of 5/6 in size, and it stops above the chin (the
box of faces specs made before the parameter existed: with ``box=detector`` the
spec is theirs; it is the parameter's ``former_default``, so a cache holding such
a spec keeps it, and the encoders' ``input=faces`` specs with it, unless
``box`` is given). The crop is aligned by the 5 landmarks either way.

A frame without the face is recorded as such (``face`` false, no row), never
as a crop of zeros; a clip in which no frame shows a face is ``absent`` for
faces. The vision features read these crops with ``--param clip.input=faces``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clmer_features import face_detect as FD
from clmer_features.extractors.base import (
    ClipOutput, DecodedClip, Extractor, ExtractorConfig, FrameRequest, param, register,
)
from clmer_features.spec import FeatureSpec


class NoFaceError(ValueError):
    """No sampled frame of the clip shows a face: the clip is absent for faces."""

    ledger_kind = "absent"


def crops(rows: np.ndarray, size: int) -> np.ndarray:
    """Stored rows [N, size*size*3] -> aligned crops [N, size, size, 3] uint8."""
    return np.asarray(rows, np.uint8).reshape(len(rows), int(size), int(size), 3)


@dataclass(frozen=True)
class FacesConfig(ExtractorConfig):
    frame_interval: float = param(2.0, "seconds between sampled frames (used when frame_count is 0)", minimum=0.01)
    frame_count: int = param(0, "if > 0: the middle frames of this many equal segments of the clip instead",
                             minimum=0)
    size: int = param(112, "side of the aligned crop in pixels (MERTools/OpenFace: 112; 224 for ViT inputs)",
                      minimum=16)
    padding: float = param(0.25, "margin around the aligned face, as a fraction of its size", minimum=0.0)
    upsample: int = param(0, "times each frame is doubled before detection (1 finds faces down to ~40 px, "
                          "about 4x slower)", minimum=0)
    min_score: float = param(0.0, "detector threshold adjustment (0: dlib's default; higher: fewer, surer faces)")
    box: str = param("landmarks", "stored box: landmarks (around the 68 face landmarks, jaw line to eyebrows; "
                     "as the OpenFace import) or detector (dlib's square HOG window, stops above the chin; "
                     "the spec of faces caches made before this parameter)", choices=("landmarks", "detector"),
                     former_default="detector")
    identity_threshold: float = param(0.6, "face-descriptor distance under which two tracklets are one person "
                                      "(used when the clip has several tracklets)", minimum=0.0)


@register
class FacesExtractor(Extractor):
    """Main face track: dlib HOG detector, 5-point landmarks, aligned crops (see the module doc)."""

    name = "faces"
    family = "faces"
    input = "video"
    Config = FacesConfig
    format_version = 1
    output = "[frames with the face, size*size*3] uint8 aligned crops, with times + a record (boxes, landmarks, " \
             "scores, frames without a face)"

    def __init__(self, model_dir: Path | None = None, config: FacesConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        self.detector = self._detector()

    def _detector(self) -> FD.FaceDetector:
        return FD.FaceDetector(self.config.upsample, self.config.min_score, landmarks68=self.landmarks68)

    @property
    def landmarks68(self) -> bool:
        return self.config.box == "landmarks"

    def frame_request(self) -> FrameRequest:
        c = self.config
        return FrameRequest.segments(c.frame_count) if c.frame_count > 0 else FrameRequest.interval(c.frame_interval)

    def spec(self) -> FeatureSpec:
        params = self.config.spec_params()
        params.pop("frame_interval" if self.config.frame_count > 0 else "frame_count")
        model_id = f"dlib:frontal_face_detector+{FD.LANDMARKS_FILE}"
        if self.landmarks68:
            model_id += f"+{FD.LANDMARKS68_FILE}"
        else:
            params.pop("box")  # the detector's box: the spec faces had before the parameter
        return FeatureSpec.create(
            self.name, extractor=self.name, model_id=model_id,
            weights_digest=FD.weights_digest(self.landmarks68), format_version=self.format_version,
            params={**params, "dtype": "uint8", "dlib": FD.dlib_version(), "align": "dlib.get_face_chip",
                    "track": "main person: IoU>=0.3 tracklets, joined by face descriptor (dlib resnet v1)"},
        )

    def provenance(self) -> dict[str, Any]:
        folder = FD.models_folder()
        return {"detector": "dlib frontal_face_detector (HOG)", "dlib": FD.dlib_version(),
                "models_dir": str(folder),
                "files": {n: FD.file_digest(folder / n) for n in FD.weights_files(self.landmarks68)}}

    def load(self) -> None:
        self.detector.load()

    def unload(self) -> None:
        self.detector = self._detector()

    def track(self, frames: np.ndarray) -> tuple[list[list[FD.Face]], list[int | None]]:
        """Every frame's faces and, per frame, the index of the main face (None: not there)."""
        found = [self.detector.detect(f) for f in frames]
        pick = FD.main_track(found, lambda i, face: self.detector.descriptor(frames[i], face),
                             self.config.identity_threshold)
        return found, pick

    def one(self, clip: DecodedClip) -> ClipOutput:
        frames, times = clip.frames[self.frame_request()]
        found, pick = self.track(frames)
        rows = [(i, found[i][j]) for i, j in enumerate(pick) if j is not None]
        if not rows:
            raise NoFaceError(f"{clip.clip_id}: no face in any of {len(frames)} sampled frames")
        c = self.config
        values = np.stack([FD.align(frames[i], f.landmarks, c.size, c.padding).reshape(-1) for i, f in rows])
        h, w = frames.shape[1:3]
        record = {
            "width": int(w), "height": int(h),
            "sampled_times": [float(t) for t in times],
            "face": [j is not None for j in pick],
            "faces_seen": [len(fs) for fs in found],
            "boxes": [[float(v) for v in (FD.landmark_box(f.landmarks68) if self.landmarks68 else f.box)]
                      for _, f in rows],
            "landmarks": [[float(v) for v in f.landmarks.reshape(-1)] for _, f in rows],
            "scores": [f.score for _, f in rows],
        }
        if self.landmarks68:
            record["landmarks68"] = [[float(v) for v in f.landmarks68.reshape(-1)] for _, f in rows]
        return ClipOutput(values=values, times=np.asarray([times[i] for i, _ in rows], np.float32), record=record)

    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        self.load()
        out: list[ClipOutput | Exception] = []
        for c in clips:
            try:
                out.append(self.one(c))
            except NoFaceError as exc:
                out.append(exc)
        return out
