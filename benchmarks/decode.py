"""Decoding per clip against its floor, on short and long keyframe intervals (GOP 12 and 250).

    flock /tmp/clmer-heavy.lock python benchmarks/decode.py --write-md benchmarks/results/decode.md

Media: ``--clips`` H.264 clips per GOP size (``--seconds`` long, 640x360, 25 fps, x264 veryfast
with its B-frames, AAC 44.1 kHz stereo: the audio is resampled to 16 kHz mono like real
videos), made once by ffmpeg into OUT. Each clip is decoded the way siglip + emotion2vec + asr
need it: one frame every 2 s and the whole audio track at 16 kHz mono.

- ``today``: ``clmer_features.media.decode_clip`` (probe with PyAV, decord ``VideoReader.get_batch``
  for the frames, decord ``AudioReader`` for the audio: three opens of the file);
- ``pyav video``: one PyAV open that indexes the packets, decodes from the last keyframe before
  each kept frame only when that is nearer than where the decoder already is (keyframe-aware
  seeking) and converts only the kept frames to RGB; audio still from decord (the frames are
  compared with today's, bit for bit);
- ``floor``: what no decoder can avoid: one open decoding as many frames as are kept (from the
  first keyframe on, converted to RGB), i.e. the cost if every kept frame were a keyframe, plus
  the audio track by the faster of decord and PyAV (decode + resample to 16 kHz mono).

Times are per clip, the median of ``--repeats`` passes over all clips (files in the page cache).
``uptime`` is recorded: the machine is shared, so compare rows of one run only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOPS = (12, 250)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def make_media(out: Path, clips: int, seconds: float) -> dict[int, list[Path]]:
    out.mkdir(parents=True, exist_ok=True)
    files: dict[int, list[Path]] = {}
    sources = ("testsrc2", "smptebars", "mandelbrot", "life")
    for gop in GOPS:
        for k in range(clips):
            path = out / f"gop{gop}_{seconds:g}s_{k}.mp4"
            if not path.exists():
                src = sources[k % len(sources)]
                tmp = path.with_name(f".{path.name}")
                subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-t", f"{seconds:g}", "-i",
                                f"{src}=s=640x360:r=25", "-f", "lavfi", "-t", f"{seconds:g}", "-i",
                                f"sine=f={220 + 110 * k}:r=44100", "-ac", "2", "-c:v", "libx264",
                                "-preset", "veryfast", "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
                                "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", "-shortest", "-f", "mp4", str(tmp)],
                               check=True)
                tmp.replace(path)
            files.setdefault(gop, []).append(path)
    return files


def kept_stamps(stamps: np.ndarray, end: float, seconds: float = 2.0) -> np.ndarray:
    from clmer_features.extractors.base import FrameRequest
    from clmer_features.media import select_frames

    return select_frames(stamps, 0.0, end, FrameRequest("interval", seconds))


def today(path: Path) -> dict[str, Any]:
    from clmer_features.extractors.base import FrameRequest
    from clmer_features.media import DecodeJob, decode_clip

    res = decode_clip(DecodeJob(path.stem, str(path), None, None, (FrameRequest("interval", 2.0),), True))
    if res.problems:
        raise RuntimeError(f"{path}: {res.problems}")
    frames, _ = next(iter(res.frames.values()))
    return {"frames": frames, "audio": res.audio}


def pyav_video(path: Path) -> dict[str, Any]:
    """One PyAV open: packet index, keyframe-aware decoding of the kept frames; audio from decord."""
    import av

    from clmer_features.media import _full_audio

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        packets = [p for p in c.demux(s) if p.pts is not None]
        pts = np.sort(np.array([p.pts for p in packets]))
        tb = float(s.time_base)
        stamps = pts * tb
        step = stamps[-1] - stamps[-2] if len(stamps) > 1 else 0.0
        idx = kept_stamps(stamps, float(stamps[-1] + step))
        want = [int(pts[i]) for i in idx]
        keys = [j for j, p in enumerate(packets) if p.is_keyframe]
        cc = s.codec_context
        got: dict[int, np.ndarray] = {}
        j = 0
        for target in sorted(set(want)):
            if target in got:
                continue
            k = max((i for i in keys if packets[i].pts <= target), default=0)
            if k > j:  # restarting at that keyframe decodes fewer frames than going on
                cc.flush_buffers()
                j = k
            while target not in got and j <= len(packets):
                for f in cc.decode(packets[j] if j < len(packets) else None):
                    if f.pts in want and f.pts not in got:
                        got[f.pts] = f.to_ndarray(format="rgb24")
                j += 1
    frames = np.stack([got[p] for p in want])
    return {"frames": frames, "audio": _full_audio(str(path))}


def floor_video(path: Path, kept: int) -> dict[str, Any]:
    """One open, as many frames as are kept decoded from the start (a keyframe) and converted to RGB."""
    import av

    with av.open(str(path)) as c:
        frames = []
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            if len(frames) >= kept:
                break
    return {"frames": np.stack(frames)}


def audio_pyav(path: Path) -> dict[str, Any]:
    import av

    with av.open(str(path)) as c:
        rs = av.AudioResampler(format="flt", layout="mono", rate=16000)
        audio = [g.to_ndarray().reshape(-1) for f in c.decode(audio=0) for g in rs.resample(f)]
    return {"audio": np.concatenate(audio)}


def audio_decord(path: Path) -> dict[str, Any]:
    from decord import AudioReader, cpu

    return {"audio": AudioReader(str(path), ctx=cpu(0), sample_rate=16000, mono=True)[:].asnumpy()}


def timed(fn: Any, files: list[Path], repeats: int, *args: Any) -> tuple[float, list[dict[str, Any]]]:
    passes, outs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = [fn(p, *args) for p in files]
        passes.append((time.perf_counter() - t0) / len(files))
    return statistics.median(passes), outs


def run(out: Path, clips: int, seconds: float, repeats: int) -> dict[str, Any]:
    from clmer_features.media import _AUDIO_CACHE, quiet_stderr

    files = make_media(out, clips, seconds)
    r: dict[str, Any] = {"clips": clips, "seconds": seconds, "repeats": repeats, "uptime_before": uptime(), "rows": []}
    for gop, paths in files.items():
        with quiet_stderr():
            today(paths[0])  # warm imports and the page cache
            t_today, o_today = timed(lambda p: (_AUDIO_CACHE.update(key=None), today(p))[1], paths, repeats)
            t_new, o_new = timed(lambda p: (_AUDIO_CACHE.update(key=None), pyav_video(p))[1], paths, repeats)
            kept = len(o_today[0]["frames"])
            t_fv, _ = timed(floor_video, paths, repeats, kept)
            t_ad, _ = timed(audio_decord, paths, repeats)
            t_ap, _ = timed(audio_pyav, paths, repeats)
            t_floor = t_fv + min(t_ad, t_ap)
        same = all(np.array_equal(a["frames"], b["frames"]) and np.array_equal(a["audio"], b["audio"])
                   for a, b in zip(o_today, o_new))
        r["rows"].append({"gop": gop, "kept_frames": kept, "today_ms": round(t_today * 1000, 1),
                          "pyav_video_ms": round(t_new * 1000, 1), "floor_ms": round(t_floor * 1000, 1),
                          "floor_video_ms": round(t_fv * 1000, 1), "audio_decord_ms": round(t_ad * 1000, 1),
                          "audio_pyav_ms": round(t_ap * 1000, 1),
                          "same_output": same})
        print(r["rows"][-1], flush=True)
    r["uptime_after"] = uptime()
    return r


def table(r: dict[str, Any]) -> str:
    lines = ["| GOP | kept frames / clip | today (ms / clip) | PyAV video, keyframe-aware (ms / clip) | floor (ms / clip) | "
             "today / floor | floor: video + audio (decord / PyAV) | frames and audio equal to today's |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['gop']} | {row['kept_frames']} | {row['today_ms']:.0f} | {row['pyav_video_ms']:.0f} | "
                     f"{row['floor_ms']:.0f} | {row['today_ms'] / row['floor_ms']:.1f}x | {row['floor_video_ms']:.0f} + "
                     f"{row['audio_decord_ms']:.0f} / {row['audio_pyav_ms']:.0f} | "
                     f"{'yes' if row['same_output'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "cache" / "decode_media"))
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write-md")
    ap.add_argument("--note", default="")
    a = ap.parse_args(argv)
    r = run(Path(a.out), a.clips, a.seconds, a.repeats)
    print(table(r))
    if a.write_md:
        from clmer_fusion.record import git_revision, machine

        md = Path(a.write_md)
        r.update(machine=machine(), revision=git_revision(ROOT))
        lines = ["# Decoding per clip: today, a keyframe-aware PyAV video path, and the floor", "",
                 f"Machine: {r['machine']['platform']}, {r['machine']['cpus']} CPUs (shared). Code revision "
                 f"{r['revision'].get('commit', '?')[:12]}; made by `benchmarks/decode.py` (record: `decode.json`).", "",
                 f"{a.clips} clips per GOP size, {a.seconds:g} s each, 640x360 25 fps H.264 (x264 veryfast, B-frames) + "
                 "AAC 44.1 kHz stereo; one frame kept every 2 s, all audio at 16 kHz mono; median of "
                 f"{a.repeats} passes.", "",
                 f"Load (`uptime`): before `{r['uptime_before']}`; after `{r['uptime_after']}`.", "", table(r)]
        if a.note:
            lines += ["", a.note]
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text("\n".join(lines) + "\n")
        md.with_name(md.stem + ".json").write_text(json.dumps(r, indent=2, default=str))
        print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
