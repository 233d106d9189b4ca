"""Decoding: frames (decord VideoReader) and 16 kHz mono audio (decord AudioReader).

Every clip is decoded once per run for all features. Decoding happens in child
processes (:class:`DecoderPool`): decord's bundled ffmpeg floods stderr, and
on some corrupt files it aborts or segfaults; in a child that costs one clip
(the pool restarts and the clip is marked failed), not the run. The children
work ahead of the model (a bounded window of futures), so decoding overlaps
model time.

A missing stream is not an error: an audio-only row has no video and some
videos have no audio track. Those come back as ``("absent", why)`` problems,
never as zeros. A decoded audio track or frame sequence more than
SHORTFALL_LIMIT_S (0.5 s) shorter than the container says is a failure
(decord returns what it could read, silently, from corrupt files).
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import re
import subprocess
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from clmer_features.extractors.base import FrameRequest
from clmer_features.media_probe import DecodeError, Probe, probe

__all__ = ["DecodeError", "DecodeJob", "DecodeResult", "DecoderPool", "Probe", "decode_clip", "probe",
           "select_frames", "interval_times"]

SAMPLE_RATE = 16000
# A decoded stream (16 kHz audio; video up to the end of its last frame) may be at most
# this much shorter than the container says for it, whatever the clip's length; more is a
# corrupt or truncated file (decord returns what it could read, silently). Measured with
# benchmarks/media_shortfall.py on 172 clean files made by ffmpeg 5.1 (aac in m4a/mp4/mov,
# mp3, opus in webm/ogg, vorbis, flac, wav; h264, vp9, mpeg4 video; 0.7 s to 600 s;
# 8/44.1/48 kHz; 10/25/29.97 fps): the largest clean shortfall was 0.029 s (opus audio in
# a webm whose container duration is the video's), video at most 0.008 s; aac decodes up
# to 0.12 s *longer* (priming is not trimmed). Codec priming and padding are at most
# 2112 samples (aac), 0.26 s at 8 kHz. 0.5 s is twice that and 17x the worst measured;
# 256 corrupted bytes near the end of a 10-minute file lose 6 s (0.25 s + 2% let 12 s pass).
SHORTFALL_LIMIT_S = 0.5


def check_shortfall(stream: str, decoded_s: float, container_s: float | None) -> None:
    """DecodeError when ``stream`` decodes more than SHORTFALL_LIMIT_S shorter than its container says."""
    if container_s is not None and container_s - decoded_s > SHORTFALL_LIMIT_S:
        raise DecodeError(
            f"{stream} decodes to {decoded_s:.2f}s but the container says {container_s:.2f}s "
            f"({container_s - decoded_s:.2f}s missing: corrupt or truncated file)"
        )


@dataclass(frozen=True)
class DecodeJob:
    """What to decode for one clip (picklable; sent to a decoder process)."""

    clip_id: str
    path: str | None
    start: float | None = None
    end: float | None = None
    frame_requests: tuple[FrameRequest, ...] = ()
    want_audio: bool = False
    audio_path: str | None = None  # a separate audio file (manifest 'audio' next to 'video')


@dataclass
class DecodeResult:
    """Decoded arrays of one clip and, per modality, why it is missing."""

    clip_id: str
    frames: dict[FrameRequest, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    audio: np.ndarray | None = None
    duration: float | None = None
    problems: dict[str, tuple[str, str]] = field(default_factory=dict)
    seconds: float = 0.0


# --- frame selection -------------------------------------------------------------
def interval_times(length: float, seconds: float) -> np.ndarray:
    """t = 0, seconds, 2*seconds ... < length; always at least t = 0."""
    n = max(1, int(math.ceil(length / seconds - 1e-9))) if length > 0 else 1
    return np.arange(n, dtype=np.float64) * seconds


def frames_shown_at(frame_starts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame shown at each of ``times``: the last one starting at or before it."""
    idx = np.searchsorted(frame_starts, np.asarray(times, np.float64) + 1e-6, side="right") - 1
    return np.clip(idx, 0, len(frame_starts) - 1)


def select_frames(
    frame_starts: np.ndarray, start: float, end: float, req: FrameRequest
) -> np.ndarray:
    """Frame indices for ``req`` in [start, end) given each frame's start time."""
    n = len(frame_starts)
    if req.kind == "interval":
        return frames_shown_at(frame_starts, start + interval_times(end - start, req.seconds))
    i0 = int(np.searchsorted(frame_starts, start - 1e-6, side="left"))
    i1 = int(np.searchsorted(frame_starts, end - 1e-6, side="left"))
    i0 = min(i0, n - 1)
    i1 = max(min(i1, n), i0 + 1)
    # R1-Omni's sampling: frame round((i + 0.5) * (n - 1) / count) of the n frames in the segment
    n_seg = i1 - i0
    idx = i0 + np.round((np.arange(req.count) + 0.5) * (n_seg - 1) / req.count + 1e-6).astype(np.int64)
    return np.clip(idx, i0, i1 - 1)


# --- decoding one clip -----------------------------------------------------------
def _open_video(path: str) -> tuple[Any, np.ndarray, float]:
    """(decord reader, each frame's start time, the video's end time) of ``path``."""
    from decord import VideoReader, cpu

    vr = VideoReader(path, ctx=cpu(0), num_threads=1)
    n = len(vr)
    if n == 0:
        raise DecodeError("video stream has no frames")
    stamps = np.asarray(vr.get_frame_timestamp(np.arange(n)))[:, 0].astype(np.float64)
    return vr, stamps, float(vr.get_frame_timestamp(n - 1)[1])


def _read_frames(vr: Any, path: str, stamps: np.ndarray, idx: np.ndarray, pr: Probe) -> np.ndarray:
    """Frames ``idx`` [F, H, W, 3], upright as players show them."""
    if pr.rotation:
        # decord 0.6 mis-sizes rotated frames (wrong shape, 4 channels, or an error): let ffmpeg
        # decode them, upright as players show them
        return ffmpeg_frames(path, stamps[idx], pr)
    return vr.get_batch(idx.tolist()).asnumpy()


def _decode_video(job: DecodeJob, pr: Probe, res: DecodeResult) -> float | None:
    vr, stamps, media_len = _open_video(job.path or "")
    check_shortfall("video", media_len, pr.video_duration or pr.duration)
    start = float(job.start or 0.0)
    if start >= media_len:
        raise DecodeError(f"start {start:g}s is past the end of the video ({media_len:.2f}s)")
    end = min(float(job.end), media_len) if job.end is not None else media_len
    if end <= start:
        raise DecodeError(f"end {end:g}s is not after start {start:g}s")
    picks = {req: select_frames(stamps, start, end, req) for req in job.frame_requests}
    union = np.unique(np.concatenate(list(picks.values())))
    batch = _read_frames(vr, job.path or "", stamps, union, pr)
    where = {int(i): k for k, i in enumerate(union)}
    for req, idx in picks.items():
        frames = batch[[where[int(i)] for i in idx]]
        times = np.maximum(stamps[idx] - start, 0.0).astype(np.float32)
        res.frames[req] = (np.ascontiguousarray(frames, dtype=np.uint8), times)
    return end - start


def ffmpeg_frames(path: str, times: np.ndarray, pr: Probe) -> np.ndarray:
    """Frames starting at ``times`` (seconds), decoded and auto-rotated by ffmpeg: [F, H, W, 3]."""
    w, h = (pr.height, pr.width) if pr.rotation in (90, 270) else (pr.width, pr.height)
    out: list[np.ndarray] = []
    for t in times:
        proc = subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{max(float(t) - 1e-4, 0.0):.6f}", "-i", path,
             "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"],
            capture_output=True, timeout=120, check=False,
        )
        if len(proc.stdout) == w * h * 3:
            out.append(np.frombuffer(proc.stdout, np.uint8).reshape(h, w, 3))
        elif out:
            out.append(out[-1])
        else:
            raise DecodeError(f"ffmpeg could not decode a frame at {float(t):.2f}s")
    return np.stack(out)


# decord's AudioReader decodes a whole file; segments of one long file (start/end rows, as in
# CMU-MOSEI) come one after another, so each decoder process keeps its last file's samples.
_AUDIO_CACHE: dict[str, Any] = {"key": None, "samples": None, "decodes": 0}


def _full_audio(path: str) -> np.ndarray:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if _AUDIO_CACHE["key"] == key:
        return _AUDIO_CACHE["samples"]
    from decord import AudioReader, cpu

    _AUDIO_CACHE["key"] = _AUDIO_CACHE["samples"] = None  # never serve a half-replaced entry
    ar = AudioReader(path, ctx=cpu(0), sample_rate=SAMPLE_RATE, mono=True)
    samples = np.asarray(ar[:].asnumpy(), dtype=np.float32).reshape(-1)
    samples.setflags(write=False)
    _AUDIO_CACHE.update(key=key, samples=samples, decodes=_AUDIO_CACHE["decodes"] + 1)
    return samples


def _decode_audio(job: DecodeJob, pr: Probe) -> tuple[np.ndarray, float]:
    samples = _full_audio(job.audio_path or job.path or "")
    got = len(samples) / SAMPLE_RATE
    check_shortfall("audio", got, pr.audio_duration or pr.duration)
    start = float(job.start or 0.0)
    if start >= got:
        raise DecodeError(f"start {start:g}s is past the end of the audio ({got:.2f}s)")
    end = min(float(job.end), got) if job.end is not None else got
    if end <= start:
        raise DecodeError(f"end {end:g}s is not after start {start:g}s")
    a, b = int(round(start * SAMPLE_RATE)), int(round(end * SAMPLE_RATE))
    return samples[a:b].copy(), end - start  # a copy: the cached samples stay untouched


_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+?\.(?:cc|h):\d+: ")


def _short(exc: BaseException) -> str:
    """A one-line reason from decord's multi-line, source-path-laden messages."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    line = _DECORD_PREFIX.sub("", lines[0] if lines else type(exc).__name__)
    return line[:300]


def decode_clip(job: DecodeJob) -> DecodeResult:
    """Decode one clip. Never raises: problems are reported per modality."""
    t0 = time.perf_counter()
    res = DecodeResult(job.clip_id)
    wanted = (["video"] if job.frame_requests else []) + (["audio"] if job.want_audio else [])

    def fail_all(kind: str, msg: str) -> DecodeResult:
        for m in wanted:
            res.problems[m] = (kind, msg)
        res.seconds = time.perf_counter() - t0
        return res

    if not wanted:
        return fail_all("error", "nothing to decode")
    if not job.path:
        return fail_all("absent", "the manifest row has no video or audio")
    if not os.path.exists(job.path):
        return fail_all("error", f"file not found: {job.path}")
    if os.path.getsize(job.path) == 0:
        return fail_all("error", f"empty file (0 bytes): {job.path}")
    try:
        pr = probe(job.path, rotation=bool(job.frame_requests))
    except DecodeError as exc:
        return fail_all("error", str(exc))
    durations = []
    if job.frame_requests:
        if not pr.has_video:
            res.problems["video"] = ("absent", "no video stream")
        else:
            try:
                durations.append(_decode_video(job, pr, res))
            except Exception as exc:  # noqa: BLE001 - reported per clip
                res.problems["video"] = ("error", f"video decode failed: {_short(exc)}")
                res.frames.clear()
    if job.want_audio:
        apr = pr
        if job.audio_path and job.audio_path != job.path:
            if not os.path.exists(job.audio_path) or os.path.getsize(job.audio_path) == 0:
                apr = None
                res.problems["audio"] = ("error", f"missing or empty audio file: {job.audio_path}")
            else:
                try:
                    apr = probe(job.audio_path, rotation=False)
                except DecodeError as exc:
                    apr = None
                    res.problems["audio"] = ("error", str(exc))
        if apr is None:
            pass
        elif not apr.has_audio:
            res.problems["audio"] = ("absent", "no audio stream")
        else:
            try:
                res.audio, dur = _decode_audio(job, apr)
                durations.append(dur)
            except Exception as exc:  # noqa: BLE001
                res.problems["audio"] = ("error", f"audio decode failed: {_short(exc)}")
    res.duration = max(durations) if durations else None
    res.seconds = time.perf_counter() - t0
    return res


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send fd 2 to /dev/null for the block (ffmpeg inside decord writes there directly)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _exit_with_parent() -> None:
    """Exit when the process that started this decoder is gone: a SIGKILLed engine or Dask
    worker must not leave decoders waiting on their queue forever."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="clmer-parent-watch", daemon=True).start()


def _worker_init() -> None:
    _exit_with_parent()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import decord

        decord.logging.set_level(decord.logging.QUIET)
    except Exception:  # noqa: BLE001
        pass


def _mp_context() -> Any:
    """spawn (no inherited threads or locks), unless __main__ cannot be re-imported
    (python - < script, notebooks): then fork."""
    import sys

    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file and not os.path.exists(main_file):
        return mp.get_context("fork")
    return mp.get_context("spawn")


# --- the pool --------------------------------------------------------------------
def default_workers() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, n - 1))


class DecoderPool:
    """Decode clips in child processes, ahead of the consumer, surviving decoder crashes.

    ``workers=0`` decodes in the calling thread (no isolation; for debugging).
    ``imap(jobs)`` yields ``(job, DecodeResult)`` in job order, keeping up to
    ``window`` clips decoding ahead. A child that dies (segfault, abort) breaks
    the pool: it is restarted, the clip at the head is retried alone, and if it
    kills the decoder again it is reported as an error; the others are resubmitted.
    """

    def __init__(
        self,
        workers: int | None = None,
        window: int | None = None,
        timeout_s: float = 600.0,
        fn: Any = None,
    ):
        self.fn = fn or decode_clip  # a module-level function (picklable); tests swap it
        self.workers = default_workers() if workers is None else int(workers)
        self.window = window or max(4, 4 * max(1, self.workers))
        self.timeout_s = timeout_s
        self._ex: ProcessPoolExecutor | None = None
        self.restarts = 0

    def _executor(self) -> ProcessPoolExecutor:
        if self._ex is None:
            self._ex = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=_mp_context(), initializer=_worker_init
            )
        return self._ex

    def _kill(self) -> None:
        ex, self._ex = self._ex, None
        if ex is None:
            return
        for p in list((getattr(ex, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                p.kill()
        with contextlib.suppress(Exception):
            ex.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        ex, self._ex = self._ex, None
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "DecoderPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _submit(self, job: DecodeJob) -> Future:
        return self._executor().submit(self.fn, job)

    def _crashed(self, job: DecodeJob, why: str) -> DecodeResult:
        res = DecodeResult(job.clip_id)
        for m in (["video"] if job.frame_requests else []) + (["audio"] if job.want_audio else []):
            res.problems[m] = ("error", why)
        return res

    def _alone(self, job: DecodeJob) -> DecodeResult:
        """Run one job by itself on a fresh pool; a second crash marks the clip failed."""
        self._kill()
        self.restarts += 1
        try:
            return self._submit(job).result(timeout=self.timeout_s)
        except BrokenProcessPool:
            self._kill()
            return self._crashed(job, "decoder process crashed on this file (corrupt media?)")
        except FutureTimeout:
            self._kill()
            return self._crashed(job, f"decoding took longer than {self.timeout_s:g}s")

    def imap(self, jobs: Iterable[DecodeJob]) -> Iterator[tuple[DecodeJob, DecodeResult]]:
        it = iter(jobs)
        if self.workers <= 0:
            for job in it:
                with quiet_stderr():
                    yield job, self.fn(job)
            return
        pending: deque[tuple[DecodeJob, Future]] = deque()

        def refill() -> None:
            while len(pending) < self.window:
                job = next(it, None)
                if job is None:
                    return
                pending.append((job, self._submit(job)))

        refill()
        while pending:
            job, fut = pending.popleft()
            try:
                res = fut.result(timeout=self.timeout_s)
            except (BrokenProcessPool, FutureTimeout) as exc:
                res = self._alone(job) if isinstance(exc, BrokenProcessPool) else self._crashed(
                    job, f"decoding took longer than {self.timeout_s:g}s"
                )
                if isinstance(exc, FutureTimeout):
                    self._kill()
                    self.restarts += 1
                pending = deque((j, self._submit(j)) for j, _ in pending)
            yield job, res
            refill()


# --- frames at given times (imports that bring their own frame times) ------------------
def frames_at(path: str, times: np.ndarray, batch: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The frames shown at ``times`` (seconds from the file's start: the last frame starting at or
    before each time), ``batch`` at a time: (positions in ``times``, frames [n, H, W, 3] uint8),
    upright as players show them. DecodeError if the video cannot be read or a time is past its end."""
    pr = probe(path)
    if not pr.has_video:
        raise DecodeError("no video stream")
    vr, stamps, end = _open_video(path)
    times = np.asarray(times, np.float64)
    late = np.flatnonzero(times >= end + 1e-3)
    if len(late):
        raise DecodeError(f"time {times[late[0]]:.3f}s is past the end of the video ({end:.3f}s)")
    idx = frames_shown_at(stamps, times)
    for s in range(0, len(idx), batch):
        pick = idx[s:s + batch]
        frames = _read_frames(vr, path, stamps, pick, pr)
        yield np.arange(s, s + len(pick)), np.ascontiguousarray(frames, dtype=np.uint8)
