"""Extractor families: the engine vs the naive per-clip loop over the same model, and the
memory of a 10-minute clip through the speech family.

    python benchmarks/families.py [--clips 24] [--out benchmarks/results]

For each family one preset runs on the same clips (H.264 + AAC, 4-8 s, 320x240)
with a tiny random model of its real class (``clmer_features.testing_zoo``; vision
models at the real 224 px input, so preprocessing costs what it costs for the real
ones): clip (vision frames), videomae (video clips), hubert (speech), roberta
(text), and the weight-free egemaps and mfcc. The naive loop is what MERTools-style
scripts do per clip: ffmpeg decodes the clip's own frames (JPEG files) or 16 kHz
audio (a wav), the model runs on that clip alone (speech in its 10 s chunks, text
one sentence at a time), one ``.npy`` per clip. The engine is ``clmer_features.
engine.extract`` (decord in a decoder process, many clips per model call, one store
part). Rows are the rows each writes (frames, tubelets, audio frames, tokens).

Memory: a fresh process loads the hubert preset (the real 512-channel convolutional
feature encoder of HuBERT/wav2vec2, whose activations dominate memory on long audio,
with a tiny transformer on top), then runs one clip of 1, 5 and 10 minutes through
the family (10 s windows, ``window_batch`` 8), or one forward over the whole clip
(what a script without windows does) at 0.5, 1 and 2 minutes; the resident memory is
sampled every 2 ms and the peak above the memory before the clip is reported. The
single forward grows with the clip (10 minutes is not run on this shared machine);
the windows stay flat. The machine is shared: `uptime` is recorded with the results.
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
from clmer_features import testing_zoo as Z  # noqa: E402

FAMILIES = [  # (family, preset, hub id)
    ("vision-frames", "clip", Z.CLIP_ID),
    ("video-clips", "videomae", Z.VIDEOMAE_ID),
    ("speech", "hubert", Z.HUBERT_ID),
    ("text", "roberta", Z.ROBERTA_ID),
    ("acoustic", "egemaps", ""),
    ("acoustic", "mfcc", ""),
]
SENTENCES = ["我今天很开心，我们去公园吧", "他说这真是太难过了", "你为什么这么生气", "天气很好，大家都很高兴",
             "我害怕一个人在家", "这件事让我很惊讶"]


def make_models(root: Path) -> None:
    if not (root / Z.CLIP_ID / "config.json").exists():
        Z.make_tiny_clip(root, image_size=224)
        Z.make_tiny_videomae(root, image_size=224)
        Z.make_tiny_hubert(root)
        Z.make_tiny_chinese_bert(root, hub_id=Z.ROBERTA_ID)


def make_clips(folder: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        p = folder / f"clip_{i:03d}.mp4"
        if not p.exists():
            T.make_video(p, 4.0 + (i % 5), size=(320, 240), fps=25, freq=180 + 15 * i,
                         pattern=("testsrc2", "smptebars", "testsrc")[i % 3])
        out.append(p)
    return out


# --------------------------------------------------------------------------- naive loops
def _ffmpeg_frames(clip: Path, tmp: str, fps: str) -> list[np.ndarray]:
    from PIL import Image

    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clip), "-vf", f"fps={fps}", "-start_number",
                    "0", "-q:v", "2", f"{tmp}/f_%04d.jpg"], check=True)
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(tmp).glob("*.jpg"))]


def _ffmpeg_audio(clip: Path, tmp: str) -> np.ndarray:
    import soundfile as sf

    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clip), "-ar", "16000", "-ac", "1",
                    f"{tmp}/a.wav"], check=True)
    return sf.read(f"{tmp}/a.wav", dtype="float32")[0]


def naive(preset: str, folder: Path, clips: list[Path], texts: list[str], out: Path) -> tuple[int, int]:
    """One clip at a time, as a research script does; returns (clips, rows) written."""
    import torch
    from transformers import AutoModel

    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    model = AutoModel.from_pretrained(str(folder)).eval() if folder.name else None
    if preset == "clip":
        from transformers import CLIPImageProcessorPil

        proc = CLIPImageProcessorPil.from_pretrained(str(folder))
    elif preset == "videomae":
        from transformers import VideoMAEImageProcessorPil

        proc = VideoMAEImageProcessorPil.from_pretrained(str(folder))
    elif preset == "hubert":
        from transformers import Wav2Vec2FeatureExtractor

        proc = Wav2Vec2FeatureExtractor.from_pretrained(str(folder))
    elif preset == "roberta":
        from transformers import AutoTokenizer

        proc = AutoTokenizer.from_pretrained(str(folder))
    for i, clip in enumerate(clips):
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            if preset == "clip":
                frames = _ffmpeg_frames(clip, tmp, "0.5")
                y = model.get_image_features(**proc(images=frames, return_tensors="pt")).pooler_output.numpy()
            elif preset == "videomae":
                frames = _ffmpeg_frames(clip, tmp, "25")
                idx = np.linspace(0, len(frames) - 1, 16).round().astype(int)
                h = model(**proc([[frames[j] for j in idx]], return_tensors="pt")).last_hidden_state[0]
                y = h.reshape(8, -1, h.shape[-1]).mean(dim=1).numpy()
            elif preset == "hubert":
                x = proc(_ffmpeg_audio(clip, tmp), sampling_rate=16000, return_tensors="pt").input_values
                if x.shape[1] > 160000:
                    n = -(-x.shape[1] // 160000)
                    x = torch.cat([x, torch.zeros(1, n * 160000 - x.shape[1])], 1).reshape(n, 160000)
                hs = model(x, output_hidden_states=True).hidden_states
                y = torch.stack(hs)[-4:].sum(0).reshape(-1, hs[-1].shape[-1]).numpy()
            elif preset == "roberta":
                hs = model(**proc(texts[i], return_tensors="pt"), output_hidden_states=True).hidden_states
                y = torch.stack(hs)[-4:].sum(0)[0, 1:-1].numpy()
            elif preset == "egemaps":
                import opensmile

                x = _ffmpeg_audio(clip, tmp)
                fs, lv = opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel
                y = opensmile.Smile(feature_set=fs, feature_level=lv.LowLevelDescriptors).process_signal(x, 16000)
                y = y.to_numpy(np.float32)  # and the functionals, as the feature stores them
                np.save(out / f"{clip.stem}.func.npy", opensmile.Smile(feature_set=fs, feature_level=lv.Functionals)
                        .process_signal(x, 16000).to_numpy(np.float32))
            else:
                import librosa

                x = _ffmpeg_audio(clip, tmp)
                y = librosa.feature.mfcc(y=x, sr=16000, n_mfcc=40, n_fft=400, hop_length=160, n_mels=40).T
        np.save(out / f"{clip.stem}.npy", y.astype(np.float16))
        rows += len(y)
    return len(clips), rows


# --------------------------------------------------------------------------- memory
MEM_SCRIPT = r"""
import os, sys, threading, time, numpy as np, torch
torch.set_num_threads(1)
minutes, mode, folder = float(sys.argv[1]), sys.argv[2], sys.argv[3]
from clmer_features.extractors import get_extractor
from clmer_features.extractors.base import DecodedClip
ext = get_extractor("hubert")(folder)
ext.load()
x = (0.1 * np.random.default_rng(0).standard_normal(int(minutes * 60 * 16000))).astype(np.float32)
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
base, peak, done = rss(), [0.0], []
def watch():
    while not done:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
th = threading.Thread(target=watch)
th.start()
if mode == "windows":
    rows = len(ext.extract([DecodedClip("long", {"media": "long"}, {}, audio=x)])[0].values)
else:
    with torch.inference_mode():
        rows = ext.model(input_values=torch.from_numpy(ext._normalized(x))[None]).last_hidden_state.shape[1]
done.append(1)
th.join()
print(f"{rows} {base:.1f} {peak[0]:.1f}")
"""


def memory(folder: Path) -> list[dict]:
    out = []
    for mode, minutes in [("windows", 1), ("windows", 5), ("windows", 10),
                          ("one forward", 0.5), ("one forward", 1), ("one forward", 2)]:
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", MEM_SCRIPT, str(minutes), mode.split()[0], str(folder)],
                             capture_output=True, text=True, check=True)
        rows, base, peak = res.stdout.split()[-3:]
        out.append({"mode": mode, "minutes": minutes, "rows": int(rows), "rss_before_mib": float(base),
                    "peak_rss_mib": float(peak), "peak_over_before_mib": float(peak) - float(base),
                    "wall_s": time.perf_counter() - t0})
        print(out[-1], file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--only", default="", help="rerun these presets (comma-separated) and keep the other rows "
                                               "and the memory table of OUT/families.json")
    args = ap.parse_args()
    only = [p for p in args.only.split(",") if p]
    previous = json.loads((Path(args.out) / "families.json").read_text()) if only else None

    import shutil

    from clmer_features.engine import extract
    from clmer_features.models import quiet_transformers
    from clmer_features.store import open_store

    quiet_transformers()
    work = Path(args.work or tempfile.mkdtemp(prefix="clmer-bench-fam-"))
    models = work / "models"
    make_models(models)
    clips = make_clips(work / "media", args.clips)
    texts = [SENTENCES[i % len(SENTENCES)] * (1 + i % 3) for i in range(len(clips))]
    manifest = T.write_manifest(work / "bench.csv", [{"clip_id": c.stem, "video": str(c), "text": t}
                                                     for c, t in zip(clips, texts)])
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows_out = []
    for family, preset, hub in FAMILIES:
        if only and preset not in only:
            rows_out.append(next(r for r in previous["families"] if r["preset"] == preset))
            continue
        folder = models / hub if hub else Path("")
        shutil.rmtree(work / "naive" / preset, ignore_errors=True)
        t0 = time.perf_counter()
        n_clips, n_rows = naive(preset, folder, clips, texts, work / "naive" / preset)
        naive_s = time.perf_counter() - t0
        shutil.rmtree(work / "cache", ignore_errors=True)
        t0 = time.perf_counter()
        s = extract(manifest, [preset], work / "cache", models_dir=models, device="cpu", batch_size=16,
                    progress=False)
        engine_s = time.perf_counter() - t0
        feat = open_store(work / "cache", "bench").feature(preset)
        e_rows = sum(len(feat.get(c)) for c in feat.clip_ids)
        rows_out.append({"family": family, "preset": preset, "clips": n_clips, "done": s.features[preset].done,
                         "naive_s": naive_s, "naive_clips_per_s": n_clips / naive_s, "naive_rows_per_s": n_rows / naive_s,
                         "engine_s": engine_s, "engine_clips_per_s": s.features[preset].done / engine_s,
                         "engine_rows_per_s": e_rows / engine_s, "naive_rows": n_rows, "engine_rows": e_rows,
                         "speedup": naive_s / engine_s})
        print(rows_out[-1], file=sys.stderr)
    mem_model = work / "models-memory"
    if previous is not None:
        mem = previous["memory"]
    else:
        if not (mem_model / Z.HUBERT_ID / "config.json").exists():
            Z.make_tiny_hubert(mem_model, conv_channels=512)  # the feature encoder's real width: its memory is real
        mem = memory(mem_model / Z.HUBERT_ID)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    table = ["| family | preset | naive clips/s | naive rows/s | engine clips/s | engine rows/s | speedup |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows_out:
        table.append(f"| {r['family']} | {r['preset']} | {r['naive_clips_per_s']:.2f} | {r['naive_rows_per_s']:.0f} "
                     f"| {r['engine_clips_per_s']:.2f} | {r['engine_rows_per_s']:.0f} | {r['speedup']:.2f}x |")
    table += ["", "| speech (hubert: the real 512-channel feature encoder, tiny transformer) | clip minutes | rows "
              "| RSS before MiB | peak RSS MiB | peak - before MiB |", "|---|---:|---:|---:|---:|---:|"]
    for m in mem:
        table.append(f"| {m['mode']} | {m['minutes']:g} | {m['rows']} | {m['rss_before_mib']:.0f} "
                     f"| {m['peak_rss_mib']:.0f} | {m['peak_over_before_mib']:.0f} |")
    table += ["", f"{len(clips)} clips, one run each, {os.cpu_count()} CPUs."]
    if previous is not None:
        table += [f"Rows other than {', '.join(only)} and the memory table: the run before (uptime before "
                  f"`{previous['uptime_before']}`, after `{previous['uptime_after']}`)."]
    table += [f"uptime before: `{uptime_before}`", f"uptime after: `{uptime_after}`"]
    text = "\n".join(table)
    print(text)
    res = {"families": rows_out, "memory": mem, "uptime_before": uptime_before, "uptime_after": uptime_after,
           "rerun": only, "previous_uptime": [previous["uptime_before"], previous["uptime_after"]] if previous else None,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "families.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "families.md").write_text("# Extractor families: engine vs naive loop (CPU, tiny models)\n\n"
                                     + __doc__.split("\n\n", 2)[2] + "\n" + text + "\n")


if __name__ == "__main__":
    main()
