"""Faces: detector throughput on CPU, and clip on face crops vs clip on frames vs a naive loop.

    python benchmarks/faces.py [--clips 8] [--interval 0.5] [--out benchmarks/results]

Clips: the astronaut photograph panned and zoomed (320x240) and, every fourth
clip, two photographs side by side (800x450, so the tracker computes face
descriptors), 4-7 s at 25 fps, made by ``clmer_features.testing_faces``.

1. faces/s: ``extract -f faces`` with a frame every ``--interval`` s, against a
   naive loop that does what a per-video script does: ffmpeg writes the clip's
   frames at that rate as JPEG files, then the same dlib detector, landmarks and
   alignment run one frame at a time (largest face per frame, no tracking), one
   ``.npy`` of crops per clip.
2. clip on faces vs clip on frames, frames every 2 s: ``-f clip`` (decode,
   encode the whole frame); ``-f faces,clip --param clip.input=faces`` from an
   empty cache (decode, detect, encode the crops); ``-f clip --param
   clip.input=faces`` with the faces already cached (read crops, encode: what a
   second encoder on the same faces costs); and the naive loop (JPEG frames,
   detect + align + CLIP one frame at a time). CLIP is a tiny random model of
   the real class at the real 224 px input, so preprocessing costs what it costs
   for the real one and the model itself little: the numbers show what the
   pipeline around the encoder costs.

The machine is shared (2 cores): ``uptime`` is recorded before and after.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clmer_features import testing as T  # noqa: E402
from clmer_features import testing_faces as F  # noqa: E402
from clmer_features import testing_zoo as Z  # noqa: E402


def make_clips(folder: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        kind = "two_faces" if i % 4 == 3 else "pan_zoom"
        p = folder / f"face_{i:03d}.mp4"
        if not p.exists():
            F.make_face_video(p, kind, seconds=4.0 + (i % 4), fps=25)
        out.append(p)
    return out


def ffmpeg_frames(clip: Path, tmp: str, fps: float) -> list[np.ndarray]:
    from PIL import Image

    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clip), "-vf", f"fps={fps}", "-start_number",
                    "0", "-q:v", "2", f"{tmp}/f_%04d.jpg"], check=True)
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(tmp).glob("*.jpg"))]


def naive(clips: list[Path], interval: float, out: Path, clip_model: Path | None = None) -> tuple[int, int]:
    """One clip, one frame at a time; returns (frames, faces)."""
    from clmer_features.face_detect import FaceDetector, align

    det = FaceDetector(landmarks68=True)  # the same work as faces' default box=landmarks
    if clip_model is not None:
        import torch
        from transformers import AutoModel, CLIPImageProcessorPil

        model = AutoModel.from_pretrained(str(clip_model)).eval()
        proc = CLIPImageProcessorPil.from_pretrained(str(clip_model))
    out.mkdir(parents=True, exist_ok=True)
    n_frames = n_faces = 0
    for clip in clips:
        with tempfile.TemporaryDirectory() as tmp:
            frames = ffmpeg_frames(clip, tmp, 1.0 / interval)
        rows = []
        for fr in frames:
            faces = det.detect(fr)
            n_frames += 1
            if not faces:
                continue
            crop = align(fr, max(faces, key=lambda f: f.area).landmarks, 112, 0.25)
            n_faces += 1
            if clip_model is None:
                rows.append(crop)
            else:
                with torch.no_grad():
                    rows.append(model.get_image_features(**proc(images=[crop], return_tensors="pt"))
                                .pooler_output[0].numpy())
        np.save(out / f"{clip.stem}.npy", np.stack(rows) if rows else np.zeros((0,)))
    return n_frames, n_faces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between frames for the faces/s run")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    from clmer_features.engine import extract
    from clmer_features.models import quiet_transformers
    from clmer_features.store import open_store

    quiet_transformers()
    work = Path(args.work or tempfile.mkdtemp(prefix="clmer-bench-faces-"))
    models = work / "models"
    if not (models / Z.CLIP_ID / "config.json").exists():
        Z.make_tiny_clip(models, image_size=224)
    clips = make_clips(work / "media", args.clips)
    manifest = T.write_manifest(work / "bench.csv", [{"clip_id": c.stem, "video": str(c)} for c in clips])
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    res: dict = {"clips": len(clips), "interval_s": args.interval}

    def run(features: list[str], params: dict, cache: str, fresh: bool = True) -> tuple[float, object]:
        if fresh:
            shutil.rmtree(work / cache, ignore_errors=True)
        t0 = time.perf_counter()
        s = extract(manifest, features, work / cache, models_dir=models, device="cpu", params=params, progress=False)
        return time.perf_counter() - t0, s

    # 1. faces per second
    fparams = {"faces": {"frame_interval": args.interval}}
    wall, s = run(["faces"], fparams, "cache-faces")
    f = open_store(work / "cache-faces", "bench").feature("faces")
    found = sum(len(f.get(c)) for c in f.clip_ids)
    sampled = sum(len(r) for r in f.records()["sampled_times"].to_list())
    st = s.features["faces"]
    res["engine_faces"] = {"wall_s": wall, "frames": sampled, "faces": found, "faces_per_s": found / wall,
                           "frames_per_s": sampled / wall, "detect_s": st.model_s, "decode_s": s.decode_s}
    print(res["engine_faces"], file=sys.stderr)
    t0 = time.perf_counter()
    n_frames, n_faces = naive(clips, args.interval, work / "naive-faces")
    wall = time.perf_counter() - t0
    res["naive_faces"] = {"wall_s": wall, "frames": n_frames, "faces": n_faces, "faces_per_s": n_faces / wall,
                          "frames_per_s": n_frames / wall}
    print(res["naive_faces"], file=sys.stderr)

    # 2. clip on faces vs frames, a frame every 2 s
    rows = {}
    wall, s = run(["clip"], {}, "cache-clip")
    rows["clip on frames"] = (wall, s.features["clip"].done)
    wall, s = run(["faces", "clip"], {"clip": {"input": "faces"}}, "cache-cf")
    rows["faces + clip on faces (empty cache)"] = (wall, s.features["clip"].done)
    shutil.rmtree(work / "cache-cf" / "bench" / "features" / "clip", ignore_errors=True)
    wall, s = run(["clip"], {"clip": {"input": "faces"}}, "cache-cf", fresh=False)
    rows["clip on cached faces"] = (wall, s.features["clip"].done)
    t0 = time.perf_counter()
    n_frames, n_faces = naive(clips, 2.0, work / "naive-clip", clip_model=models / Z.CLIP_ID)
    rows["naive: JPEG frames, detect + align + clip per frame"] = (time.perf_counter() - t0, len(clips))
    res["clip"] = [{"run": k, "wall_s": w, "clips": n, "clips_per_s": n / w} for k, (w, n) in rows.items()]
    for r in res["clip"]:
        print(r, file=sys.stderr)

    res["uptime_before"] = uptime_before
    res["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    res["machine"] = f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs (shared)"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "faces.json").write_text(json.dumps(res, indent=2))
    e, n = res["engine_faces"], res["naive_faces"]
    lines = [
        "# faces: detector throughput and clip on faces vs frames (CPU)", "",
        f"{len(clips)} clips (astronaut pan/zoom 320x240; every 4th: two faces 800x450), 4-7 s at 25 fps; "
        f"machine: {res['machine']}.", "",
        f"uptime before: `{uptime_before}`  ", f"uptime after: `{res['uptime_after']}`", "",
        f"## faces/s, a frame every {args.interval:g} s", "",
        "| run | frames | faces | wall s | faces/s | frames/s |", "|---|---|---|---|---|---|",
        f"| engine (`-f faces`) | {e['frames']} | {e['faces']} | {e['wall_s']:.1f} | {e['faces_per_s']:.1f} | "
        f"{e['frames_per_s']:.1f} |",
        f"| naive (ffmpeg JPEGs, detect per frame) | {n['frames']} | {n['faces']} | {n['wall_s']:.1f} | "
        f"{n['faces_per_s']:.1f} | {n['frames_per_s']:.1f} |", "",
        f"Engine: detection {e['detect_s']:.1f} s, decoding {e['decode_s']:.1f} s (in a decoder process).", "",
        "## clip (tiny CLIP at 224 px), a frame every 2 s", "",
        "| run | clips | wall s | clips/s |", "|---|---|---|---|",
        *[f"| {r['run']} | {r['clips']} | {r['wall_s']:.1f} | {r['clips_per_s']:.2f} |" for r in res["clip"]],
    ]
    (out / "faces.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
