"""How much shorter than its container says does clean media decode? (issue 14, item 2)

Makes clean files with ffmpeg in the containers/codecs users bring (aac in m4a and
mp4, mp3, opus in webm and ogg, vorbis, flac, wav, h264 and vp9 video), at several
lengths and sample rates, decodes them as clmer does (decord, 16 kHz mono audio;
decord frame timestamps for video) and prints, per file, container duration minus
decoded duration. The largest clean shortfall justifies media.SHORTFALL_LIMIT_S.

    python benchmarks/media_shortfall.py [--out benchmarks/results/media_shortfall.md]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from clmer_features.media import SAMPLE_RATE
from clmer_features.media_probe import probe

AUDIO = [  # (name, extension, ffmpeg codec args)
    ("aac/m4a", "m4a", ["-c:a", "aac", "-b:a", "32k"]),
    ("mp3", "mp3", ["-c:a", "libmp3lame", "-b:a", "32k"]),
    ("opus/webm", "webm", ["-c:a", "libopus", "-b:a", "16k"]),
    ("opus/ogg", "ogg", ["-c:a", "libopus", "-b:a", "16k"]),
    ("vorbis/ogg", "oga", ["-c:a", "libvorbis", "-q:a", "0"]),
    ("flac", "flac", ["-c:a", "flac"]),
    ("wav", "wav", ["-c:a", "pcm_s16le"]),
]
VIDEO = [  # (name, extension, ffmpeg codec args)
    ("h264+aac/mp4", "mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"]),
    ("h264+aac/mov", "mov", ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"]),
    ("vp9+opus/webm", "webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "50k",
                               "-c:a", "libopus"]),
    ("mpeg4+mp3/avi", "avi", ["-c:v", "mpeg4", "-c:a", "libmp3lame"]),
]


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def audio_seconds(path: Path) -> float:
    from decord import AudioReader, cpu

    return AudioReader(str(path), ctx=cpu(0), sample_rate=SAMPLE_RATE, mono=True).shape[1] / SAMPLE_RATE


def video_seconds(path: Path) -> float:
    from decord import VideoReader, cpu

    vr = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    return float(vr.get_frame_timestamp(len(vr) - 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in (0.7, 3.3, 61.7, 600.0):
            for rate in (8000, 44100, 48000):
                for name, ext, codec in AUDIO:
                    if "opus" in name and rate == 44100:
                        continue  # opus takes 48k (ffmpeg resamples 44.1k itself: same as 48k)
                    p = Path(tmp) / f"a.{ext}"
                    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={rate}:duration={seconds}",
                           *codec, str(p))
                    pr = probe(str(p), rotation=False)
                    expected = pr.audio_duration or pr.duration
                    rows.append((name, seconds, rate, "audio", expected, audio_seconds(p)))
            for fps in (10, 25, 29.97):
                for name, ext, codec in VIDEO:
                    p = Path(tmp) / f"v.{ext}"
                    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=64x48:rate={fps}:duration={seconds}",
                           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}",
                           *codec, "-shortest", str(p))
                    pr = probe(str(p), rotation=True)
                    rows.append((name, seconds, fps, "video", pr.video_duration or pr.duration, video_seconds(p)))
                    rows.append((name, seconds, fps, "audio", pr.audio_duration or pr.duration, audio_seconds(p)))
    lines = ["| container | seconds | rate/fps | stream | container says | decoded | shortfall (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, s, r, kind, exp, got in rows:
        short = (exp - got) if exp is not None else float("nan")
        lines.append(f"| {name} | {s:g} | {r:g} | {kind} | {exp if exp is None else round(exp, 4)} | {got:.4f} | {short:+.4f} |")
    shorts = np.array([(e - g) for *_, e, g in rows if e is not None])
    lines.append("")
    lines.append(f"largest shortfall {shorts.max():+.4f} s, smallest {shorts.min():+.4f} s over {len(shorts)} clean files")
    lines.append(f"machine load (1/5/15 min) when done: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
