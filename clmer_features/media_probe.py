"""What a media file holds: streams, durations, rotation (PyAV in-process, ffprobe as fallback)."""
from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Probe:
    has_video: bool
    has_audio: bool
    duration: float | None
    video_duration: float | None
    audio_duration: float | None
    rotation: int
    width: int = 0
    height: int = 0


class DecodeError(Exception):
    """A clip's media could not be decoded (message names the file and reason)."""


# --- probing ---------------------------------------------------------------------
def _float(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _tag_seconds(tag: Any) -> float | None:
    """``'00:10:00.007000000'`` (Matroska's per-stream DURATION tag) -> seconds."""
    try:
        h, m, sec = str(tag).split(":")
        return _float(int(h) * 3600 + int(m) * 60 + float(sec))
    except (TypeError, ValueError):
        return None


def _stream_seconds(stream: dict[str, Any]) -> float | None:
    """An ffprobe stream's duration, else its DURATION tag (Matroska/WebM)."""
    return _float(stream.get("duration")) or _tag_seconds((stream.get("tags") or {}).get("DURATION"))


def probe(path: str, rotation: bool = True) -> Probe:
    """Streams, durations and rotation of a media file; DecodeError if unreadable.

    PyAV (a faster-whisper dependency) probes in-process in a few ms; without it,
    ffprobe (a subprocess, 50-250 ms). ``rotation=False`` skips decoding the
    first frame that PyAV needs to read the display rotation.
    """
    try:
        import av  # noqa: F401
    except ImportError:
        return _ffprobe(path)
    return _av_probe(path, rotation)


def _av_probe(path: str, want_rotation: bool) -> Probe:
    import av

    try:
        with av.open(path) as c:
            video = [s for s in c.streams.video
                     if not (getattr(s, "disposition", 0) & getattr(av.stream.Disposition, "attached_pic", 0))]
            audio = list(c.streams.audio)

            def dur(s: Any) -> float | None:
                if s.duration is not None and s.time_base:
                    return _float(s.duration * s.time_base)
                return _tag_seconds((s.metadata or {}).get("DURATION"))  # Matroska/WebM: a tag per stream

            rotation = 0
            if video and want_rotation:
                try:
                    frame = next(c.decode(video=video[0].index))
                    rotation = int(round(float(getattr(frame, "rotation", 0) or 0)))
                except (StopIteration, av.error.FFmpegError):
                    pass
            v = video[0] if video else None
            return Probe(
                has_video=bool(video),
                has_audio=bool(audio),
                duration=_float(c.duration / 1e6) if c.duration else None,
                video_duration=dur(v) if v is not None else None,
                audio_duration=dur(audio[0]) if audio else None,
                rotation=rotation % 360,
                width=int(v.codec_context.width or 0) if v is not None else 0,
                height=int(v.codec_context.height or 0) if v is not None else 0,
            )
    except av.error.FFmpegError as exc:
        msg = getattr(exc, "strerror", None) or str(exc)
        raise DecodeError(f"cannot read media: {path}: {msg}") from None


def _ffprobe(path: str) -> Probe:
    try:
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", path],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except FileNotFoundError:  # no ffprobe either: trust decord to say what is there
        return Probe(True, True, None, None, None, 0)
    if out.returncode != 0:
        msg = out.stderr.decode(errors="replace").strip().splitlines()
        raise DecodeError(f"cannot read media: {msg[-1] if msg else 'ffprobe failed'}")
    info = json.loads(out.stdout or b"{}")
    streams = info.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video"
             and not (s.get("disposition") or {}).get("attached_pic")]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    rotation = 0
    if video:
        v = video[0]
        for sd in v.get("side_data_list") or []:
            if "rotation" in sd:
                rotation = int(round(float(sd["rotation"])))
        if not rotation and "rotate" in (v.get("tags") or {}):
            rotation = -int(v["tags"]["rotate"])  # tag is clockwise, side data counterclockwise
    fmt = _float((info.get("format") or {}).get("duration"))
    return Probe(
        has_video=bool(video),
        has_audio=bool(audio),
        duration=fmt,
        video_duration=_stream_seconds(video[0]) if video else None,
        audio_duration=_stream_seconds(audio[0]) if audio else None,
        rotation=rotation % 360,
        width=int(video[0].get("width") or 0) if video else 0,
        height=int(video[0].get("height") or 0) if video else 0,
    )
