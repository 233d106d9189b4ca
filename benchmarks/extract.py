"""Extraction engine vs the naive loop research scripts use, on the same clips and models.

    python benchmarks/extract.py [--clips 50] [--image-size 224] [--out benchmarks/results]

Naive loop, per clip: an ffmpeg subprocess writes one JPEG per 2 s, each JPEG is
read back and sent through the SigLIP processor and model alone (one call per
frame), and the rows go to one ``.npy`` per clip. Engine: ``clmer_features.engine
.extract`` (decord in a decoder process, frames of many clips per model call,
one store part). Both use the same tiny random SigLIP (vision tower at the
real 224 px input size, so preprocessing costs what it costs for the real
model) and the same frames (t = 0, 2, 4 ...). One run each; the machine's load
is recorded with the results, since other work on a shared machine skews them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clmer_features import testing as T  # noqa: E402


def make_clips(folder: Path, n: int) -> list[Path]:
    paths = []
    patterns = ("testsrc2", "smptebars", "testsrc", "rgbtestsrc")
    for i in range(n):
        p = folder / f"clip_{i:03d}.mp4"
        if not p.exists():
            T.make_video(p, 4.0 + (i % 5), size=(320, 240), fps=25, freq=200 + 10 * i,
                         pattern=patterns[i % len(patterns)])
        paths.append(p)
    return paths


def naive(clips: list[Path], model_dir: Path, out: Path) -> dict[str, float]:
    """The research-script loop: ffmpeg -> JPEG files -> one model call per frame -> .npy per clip."""
    import torch
    from PIL import Image

    from clmer_features.extractors.siglip import load_image_processor
    from transformers import SiglipVisionModel

    t = {"load": 0.0, "decode": 0.0, "model": 0.0, "write": 0.0}
    t0 = time.perf_counter()
    proc = load_image_processor(model_dir)
    model = SiglipVisionModel.from_pretrained(str(model_dir)).eval()
    t["load"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clip), "-vf", "fps=0.5",
                            "-start_number", "0", "-q:v", "2", f"{tmp}/f_%04d.jpg"], check=True)
            frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(tmp).glob("*.jpg"))]
        t["decode"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = []
        for f in frames:
            with torch.no_grad():
                rows.append(model(**proc(images=[f], return_tensors="pt")).pooler_output[0].numpy())
        t["model"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        np.save(out / f"{clip.stem}.npy", np.stack(rows).astype(np.float16))
        t["write"] += time.perf_counter() - t0
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=50)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    from clmer_features.engine import extract
    from clmer_features.models import quiet_transformers

    quiet_transformers()
    work = Path(args.work or tempfile.mkdtemp(prefix="clmer-bench-"))
    t0 = time.perf_counter()
    clips = make_clips(work / "media", args.clips)
    models = work / "models"
    if not (models / T.SIGLIP_ID / "config.json").exists():
        T.make_tiny_siglip(models, image_size=args.image_size, hidden=64)
    print(f"{len(clips)} clips made in {time.perf_counter() - t0:.1f}s under {work}", file=sys.stderr)
    manifest = T.write_manifest(work / "bench.csv", [{"clip_id": c.stem, "video": str(c)} for c in clips])
    load_before = os.getloadavg()

    import shutil

    shutil.rmtree(work / "cache", ignore_errors=True)  # both loops start from nothing
    shutil.rmtree(work / "naive_npy", ignore_errors=True)
    t0 = time.perf_counter()
    nt = naive(clips, models / T.SIGLIP_ID, work / "naive_npy")
    naive_wall = time.perf_counter() - t0

    t0 = time.perf_counter()
    s = extract(manifest, ["siglip"], work / "cache", models_dir=models, device="cpu",
                batch_size=args.batch_size, progress=False)
    engine_wall = time.perf_counter() - t0
    st = s.features["siglip"]

    # same frames, same model: the rows must agree (JPEG round trip aside)
    from clmer_features.store import open_store

    feat = open_store(work / "cache", "bench").feature("siglip")
    a = np.load(work / "naive_npy" / f"{clips[0].stem}.npy").astype(np.float32)
    b = feat.get(clips[0].stem).astype(np.float32)
    same_rows = a.shape == b.shape
    cos = float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))) if same_rows else float("nan")

    res = {
        "clips": len(clips), "frames_per_clip": "every 2 s", "image_size": args.image_size,
        "naive": {"wall_s": naive_wall, "clips_per_s": len(clips) / naive_wall, **{f"{k}_s": v for k, v in nt.items()}},
        "engine": {"wall_s": engine_wall, "clips_per_s": len(clips) / engine_wall, "load_s": st.load_s,
                   "decode_s_in_decoders": s.decode_s, "decode_wait_s": s.decode_wait_s, "model_s": st.model_s,
                   "write_s": st.write_s, "finalize_s": s.finalize_s, "done": st.done, "failed": st.failed},
        "speedup": naive_wall / engine_wall,
        "rows_agree_cosine_first_clip": cos,
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "python": platform.python_version(), "platform": platform.platform()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    n, e = res["naive"], res["engine"]
    table = "\n".join([
        f"| loop | wall s | clips/s | load s | decode s | model s | write s |",
        f"|---|---:|---:|---:|---:|---:|---:|",
        f"| naive (ffmpeg JPEG, 1 call/frame, .npy) | {n['wall_s']:.1f} | {n['clips_per_s']:.2f} | {n['load_s']:.2f} "
        f"| {n['decode_s']:.1f} | {n['model_s']:.1f} | {n['write_s']:.2f} |",
        f"| engine (decord process, batched, store part) | {e['wall_s']:.1f} | {e['clips_per_s']:.2f} | {e['load_s']:.2f} "
        f"| {e['decode_s_in_decoders']:.1f} ({e['decode_wait_s']:.1f} waited) | {e['model_s']:.1f} "
        f"| {e['write_s'] + e['finalize_s']:.2f} |",
        "",
        f"speedup {res['speedup']:.2f}x; rows of the first clip agree with cosine {cos:.4f} "
        f"(naive frames went through JPEG); {len(clips)} clips, one run each, "
        f"{os.cpu_count()} CPUs, load average before {load_before[0]:.1f}.",
    ])
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "extract.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "extract.md").write_text("# Extraction: engine vs naive loop (CPU)\n\n" + __doc__.split("\n\n", 2)[2]
                                    + "\n" + table + "\n")


if __name__ == "__main__":
    main()
