"""Face test media made in code from real photographs that packages ship.

- ``astronaut()``: scikit-image's ``data.astronaut()`` (Eileen Collins, 512 x 512).
  :data:`ASTRONAUT_BOX` is her face, checked by eye on the photograph: cheek to
  cheek, hairline to chin, in its pixels. Her eyes are about 4 degrees off level
  in the photograph (eye centres near (204, 101) and (246, 104)).
- ``hopper()``: matplotlib's sample ``grace_hopper.jpg`` (512 x 600);
  :data:`HOPPER_BOX` likewise.

:func:`make_face_video` writes an H.264 mp4 of ``pan_zoom`` (the astronaut,
panned and zoomed), ``leaves`` (that pan for the first half, then an empty
grey frame) or ``two_faces`` (Grace Hopper still on the left, the
astronaut on the right, growing from smaller than her to larger and moving) and
returns, per video frame, the time and the true face box of each person in
video pixels, carried through the same transform as the frame.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ASTRONAUT_BOX = (180.0, 80.0, 272.0, 188.0)
HOPPER_BOX = (168.0, 140.0, 362.0, 328.0)
# head-and-shoulders crops (x0, y0, x1, y1) that two_faces pastes
ASTRONAUT_CROP = (120, 20, 330, 260)
HOPPER_CROP = (120, 80, 410, 420)


DEFAULT_SIZE = {"pan_zoom": (320, 240), "leaves": (320, 240), "two_faces": (800, 450)}


def astronaut() -> np.ndarray:
    try:
        from skimage import data
    except ImportError:  # pragma: no cover - the test extra installs it
        raise RuntimeError("the face test media need scikit-image (pip install clmer[test])") from None
    return np.asarray(data.astronaut(), np.uint8)


def hopper() -> np.ndarray:
    import matplotlib
    from PIL import Image

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return np.asarray(Image.open(path).convert("RGB"), np.uint8)


@dataclass
class FaceVideo:
    """A made video: its path, per frame the time, and per person (name -> [frames, 4]) the true box."""

    path: Path
    times: np.ndarray
    boxes: dict[str, np.ndarray]
    size: tuple[int, int]
    fps: int

    def at(self, person: str, t: float) -> np.ndarray:
        """The true box of ``person`` in the frame shown at time ``t``."""
        return self.boxes[person][int(np.clip(np.round(t * self.fps), 0, len(self.times) - 1))]


def _paste(canvas: "Image.Image", img: np.ndarray, scale: float, x: float, y: float) -> None:
    """``img`` scaled by ``scale`` with its top-left corner at (x, y) on ``canvas``."""
    from PIL import Image

    im = Image.fromarray(img)
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    canvas.paste(im, (round(x), round(y)))


def _frames(kind: str, n: int, size: tuple[int, int]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    from PIL import Image

    W, H = size
    frames: list[np.ndarray] = []
    boxes: dict[str, list[tuple[float, ...]]] = {"astronaut": [], "hopper": []} if kind == "two_faces" \
        else {"astronaut": []}
    a_img = astronaut()
    h_img = hopper() if kind == "two_faces" else None
    for i in range(n):
        t = i / max(n - 1, 1)
        if kind == "leaves" and i >= n // 2:  # the astronaut's pan for half the clip, then nobody
            frames.append(np.full((H, W, 3), 128, np.uint8))
            boxes["astronaut"].append((np.nan,) * 4)
            continue
        if kind in ("pan_zoom", "leaves"):
            w = 420 - 170 * t  # the source window zooms in from 420 to 250 px wide
            x0 = 228 + 40 * np.sin(2 * np.pi * t) - w / 2
            y0 = 150 - 10 * t - w * H / W / 2
            s = w / W  # source pixels per video pixel
            fr = Image.fromarray(a_img).transform((W, H), Image.AFFINE, (s, 0, x0, 0, s, y0),
                                                  resample=Image.BILINEAR, fillcolor=(128, 128, 128))
            b = ASTRONAUT_BOX
            boxes["astronaut"].append(((b[0] - x0) / s, (b[1] - y0) / s, (b[2] - x0) / s, (b[3] - y0) / s))
        elif kind == "two_faces":
            fr = Image.new("RGB", (W, H), (128, 128, 128))
            hs = 0.55 * H / 450  # Grace Hopper's head and shoulders, still, face ~107 px wide at 800 x 450
            hx, hy = 0.03 * W, 0.3 * H
            _paste(fr, h_img[HOPPER_CROP[1]:HOPPER_CROP[3], HOPPER_CROP[0]:HOPPER_CROP[2]], hs, hx, hy)
            a_s = (0.95 + 0.75 * t) * H / 450  # the astronaut grows from smaller than her to larger
            ax, ay = (0.40 + 0.12 * t) * W, (0.40 - 0.35 * t) * H  # and moves up and right
            _paste(fr, a_img[ASTRONAUT_CROP[1]:ASTRONAUT_CROP[3], ASTRONAUT_CROP[0]:ASTRONAUT_CROP[2]], a_s, ax, ay)
            for name, b, c, sc, x, y in (("hopper", HOPPER_BOX, HOPPER_CROP, hs, hx, hy),
                                         ("astronaut", ASTRONAUT_BOX, ASTRONAUT_CROP, a_s, ax, ay)):
                boxes[name].append((x + (b[0] - c[0]) * sc, y + (b[1] - c[1]) * sc,
                                    x + (b[2] - c[0]) * sc, y + (b[3] - c[1]) * sc))
        else:
            raise ValueError(f"kind must be 'pan_zoom', 'leaves' or 'two_faces', not {kind!r}")
        frames.append(np.asarray(fr, np.uint8))
    return frames, {k: np.asarray(v, np.float32) for k, v in boxes.items()}


def face_frames(kind: str = "pan_zoom", n: int = 20, size: tuple[int, int] | None = None
                ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The frames of :func:`make_face_video` without encoding them, and the true boxes."""
    return _frames(kind, n, size or DEFAULT_SIZE[kind])


def make_face_video(path: str | Path, kind: str = "pan_zoom", *, seconds: float = 2.0, fps: int = 10,
                    size: tuple[int, int] | None = None) -> FaceVideo:
    """Write ``kind`` as an H.264 mp4 (near-lossless, so the pixels are the photographs'); ``size``
    defaults to 320 x 240 for pan_zoom and 800 x 450 for two_faces."""
    size = size or DEFAULT_SIZE[kind]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(int(round(seconds * fps)), 1)
    frames, boxes = _frames(kind, n, size)
    W, H = size
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{W}x{H}", "-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12",
           "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames), check=True,
                   env={**os.environ, "AV_LOG_FORCE_NOCOLOR": "1"})
    return FaceVideo(path, np.arange(n, dtype=np.float32) / fps, boxes, size, fps)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
