"""What one GPU does with the four default encoders at real size: clips/s, busy time, TFLOP/s, decode.

    python benchmarks/gpu.py --write-md benchmarks/results/gpu.md      # on a GPU node (< 8 min)
    python benchmarks/gpu.py --tiny                                    # CPU smoke run (the test suite's)

Models: the real classes at real size with random weights (nothing to download):
``SiglipVisionModel`` (siglip-base-patch16-224), funasr's ``Emotion2vec`` (emotion2vec_base sizes),
``WhisperForConditionalGeneration`` (whisper-large-v3-turbo: 32 encoder and 4 decoder layers, 128
mel bins) and ``BertModel`` (bert-base-uncased); fp16 compute on CUDA (autocast), float32 on CPU. ``--tiny`` swaps
in a few-layer version of each for the CPU.

Synthetic clips of ``--clip-seconds`` (8 s: a typical emotion-corpus utterance): siglip sees one
224x224 frame per 2 s; emotion2vec the clip's 16 kHz audio; Whisper a 30 s window per clip
(per-clip) or one per ``floor(30 / (clip + 1 s))`` clips (packed), encoder plus a
``--tokens``-token greedy decode; BERT 32 tokens. Per encoder: clips/s (timed after a warm-up,
CUDA synchronised), the FLOPs of one batch counted by ``torch.utils.flop_counter`` times the
batches run over the time (TFLOP/s), against the card's dense fp16 peak when the card is known,
and the GPU's busy fraction sampled every 50 ms (NVML, through ``torch.cuda.utilization``)
while it runs. Decode: ``--decode-clips`` H.264 + AAC clips made by ffmpeg, decoded by the
engine's ``DecoderPool`` (default processes) for what these encoders need; its clips/s against
what the encoders consume together (1 / the sum of 1 / clips/s).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
# dense fp16/bf16 tensor-core peaks, TFLOP/s (vendor data sheets, no sparsity)
PEAKS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 756.0, "A100": 312.0, "L40S": 362.0,
         "L4": 121.0, "A10": 125.0, "V100": 125.0, "T4": 65.0}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def peak_tflops(name: str) -> float | None:
    for key, value in PEAKS.items():  # most specific first
        if key.lower() in name.lower():
            return value
    return None


class BusySampler:
    """Samples the GPU's utilisation (share of time a kernel ran) while the block runs: NVML through
    ``torch.cuda.utilization`` every ``every`` seconds, else a streaming ``nvidia-smi`` query."""

    def __init__(self, device: str, every: float = 0.05):
        self.device, self.every, self.samples = device, every, []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._smi: subprocess.Popen | None = None

    def __enter__(self) -> "BusySampler":
        import torch

        if not self.device.startswith("cuda"):
            return self
        index = torch.device(self.device).index or 0
        try:
            torch.cuda.utilization(index)
            read: Callable[[], float | None] = lambda: torch.cuda.utilization(index) / 100.0  # noqa: E731
        except Exception:  # noqa: BLE001 - no pynvml: nvidia-smi, if there is one
            try:
                self._smi = subprocess.Popen(
                    ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                     f"-lms={max(50, int(self.every * 1000))}"], stdout=subprocess.PIPE, text=True)
            except OSError:
                return self
            smi = self._smi

            def read() -> float | None:
                line = smi.stdout.readline() if smi.stdout else ""
                return float(line) / 100.0 if line.strip().replace(".", "", 1).isdigit() else None

        def loop() -> None:
            while not self._stop.is_set():
                value = read()
                if value is not None:
                    self.samples.append(value)
                if self._smi is None:
                    time.sleep(self.every)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._smi is not None:
            self._smi.terminate()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def busy(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


# --------------------------------------------------------------------------- models
def build_models(tiny: bool, device: str) -> dict[str, Any]:
    import torch
    from transformers import BertConfig, BertModel, SiglipVisionConfig, SiglipVisionModel, WhisperConfig
    from transformers import WhisperForConditionalGeneration

    from clmer_features.extractors.emotion2vec import contained_funasr
    from clmer_features.testing_audio import EMOTION2VEC_BASE_SIZES, emotion2vec_config

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # generate's notes about max_length
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    siglip = SiglipVisionConfig(**(small if tiny else {}))  # defaults: base-patch16-224
    bert = BertConfig(**(small if tiny else {}))  # defaults: bert-base-uncased
    whisper = WhisperConfig(
        vocab_size=51866, num_mel_bins=128, max_source_positions=1500, max_target_positions=448,
        **({"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
            "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64} if tiny else
           {"d_model": 1280, "encoder_layers": 32, "decoder_layers": 4, "encoder_attention_heads": 20,
            "decoder_attention_heads": 20, "encoder_ffn_dim": 5120, "decoder_ffn_dim": 5120}),
        decoder_start_token_id=50258, pad_token_id=50257, bos_token_id=50257, eos_token_id=50257,
    )
    with contained_funasr():
        from funasr.register import tables

        import funasr.models.emotion2vec.model  # noqa: F401  (registers "Emotion2vec")
    e2v_conf = emotion2vec_config(**({} if tiny else EMOTION2VEC_BASE_SIZES))["model_conf"]
    torch.manual_seed(0)
    models = {
        "siglip": SiglipVisionModel(siglip),
        "emotion2vec": tables.model_classes.get("Emotion2vec")(model_conf=e2v_conf, vocab_size=-1),
        "whisper": WhisperForConditionalGeneration(whisper),
        "bert": BertModel(bert),
    }
    # float32 weights, fp16 compute under autocast on CUDA (funasr's model mixes dtypes otherwise)
    return {k: m.to(device=device).eval() for k, m in models.items()}


def workloads(models: dict[str, Any], device: str, clip_s: float, tokens: int, batch: int, tiny: bool
              ) -> dict[str, tuple[int, Callable[[], Any]]]:
    """name -> (clips one call covers, the call)."""
    import torch

    dtype = torch.float32
    frames = max(1, math.ceil(clip_s / 2))
    per_window = max(1, int(30 // (clip_s + 1)))
    g = torch.Generator(device="cpu").manual_seed(0)
    pixels = torch.randn(batch * frames, 3, 224, 224, generator=g).to(device, dtype)
    audio = torch.randn(batch, int(clip_s * SR), generator=g).to(device, dtype)
    mels = torch.randn(batch, 128, 3000, generator=g).to(device, dtype)
    ids = torch.randint(1000, 20000, (batch, 32), generator=g).to(device)
    w = models["whisper"]

    def whisper_call() -> Any:
        return w.generate(input_features=mels, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                          num_beams=1, decoder_start_token_id=50258)

    return {
        "siglip": (batch, lambda: models["siglip"](pixel_values=pixels)),
        "emotion2vec": (batch, lambda: models["emotion2vec"].extract_features(audio, padding_mask=None)),
        "whisper per-clip": (batch, whisper_call),
        "whisper packed": (batch * per_window, whisper_call),
        "bert": (batch, lambda: models["bert"](input_ids=ids)),
    }


def flops_of(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def measure(name: str, clips: int, fn: Callable[[], Any], device: str, seconds: float, peak: float | None
            ) -> dict[str, Any]:
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    autocast = (torch.autocast("cuda", dtype=torch.float16) if device.startswith("cuda")
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        fn()  # warm-up (kernels, allocator)
        sync()
        flops = flops_of(fn)
        calls = 0
        with BusySampler(device) as sampler:
            t0 = time.perf_counter()
            while True:
                fn()
                calls += 1
                sync()
                if time.perf_counter() - t0 >= seconds:
                    break
            took = time.perf_counter() - t0
    tflops = flops * calls / took / 1e12
    return {"encoder": name, "clips_per_s": round(clips * calls / took, 2), "calls": calls, "seconds": round(took, 2),
            "gflop_per_clip": round(flops / clips / 1e9, 2), "flop_per_clip": flops / clips, "tflops": round(tflops, 3),
            "peak_fraction": round(tflops / peak, 4) if peak else None,
            "busy": round(sampler.busy, 3) if sampler.busy is not None else None}


# --------------------------------------------------------------------------- decoding
def decode_rate(n: int, clip_s: float, workers: int | None) -> dict[str, Any]:
    from clmer_features.extractors.base import FrameRequest
    from clmer_features.media import DecodeJob, DecoderPool

    with tempfile.TemporaryDirectory(prefix="clmer-gpu-bench-") as tmp:
        paths = []
        for k in range(n):
            p = Path(tmp) / f"c{k}.mp4"
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=s=640x360:r=25:d={clip_s:g}",
                            "-f", "lavfi", "-i", f"sine=f={200 + 10 * k}:d={clip_s:g}:r=44100", "-c:v", "libx264",
                            "-preset", "ultrafast", "-g", "50", "-c:a", "aac", "-shortest", str(p)], check=True)
            paths.append(p)
        reqs = (FrameRequest("interval", 2.0),)
        jobs = [DecodeJob(p.stem, str(p), None, None, reqs, True) for p in paths]
        with DecoderPool(workers=workers) as pool:
            list(pool.imap(jobs[:2]))  # start the processes
            t0 = time.perf_counter()
            bad = sum(bool(res.problems) for _, res in pool.imap(jobs))
            took = time.perf_counter() - t0
            used = pool.workers
    return {"clips": n, "seconds": round(took, 2), "clips_per_s": round(n / took, 2), "workers": used, "failed": bad}


# --------------------------------------------------------------------------- main
def run(tiny: bool, device: str | None, seconds: float, clip_s: float, tokens: int, batch: int, decode_clips: int,
        workers: int | None) -> dict[str, Any]:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    peak = peak_tflops(name) if device.startswith("cuda") else None
    t0 = time.perf_counter()
    models = build_models(tiny, device)
    build_s = time.perf_counter() - t0
    rows = [measure(n, c, fn, device, seconds, peak)
            for n, (c, fn) in workloads(models, device, clip_s, tokens, batch, tiny).items()]
    del models
    dec = decode_rate(decode_clips, clip_s, workers)
    main = [r for r in rows if r["encoder"] != "whisper per-clip"]
    consume = 1.0 / sum(1.0 / r["clips_per_s"] for r in main)
    return {"device": device, "gpu": name, "peak_tflops": peak, "tiny": tiny, "clip_seconds": clip_s, "batch": batch,
            "tokens": tokens, "build_s": round(build_s, 1), "rows": rows, "decode": dec,
            "encoders_consume_clips_per_s": round(consume, 2), "total_s": round(time.perf_counter() - t0, 1),
            "uptime": uptime()}


def table(r: dict[str, Any]) -> str:
    peak = f"{r['peak_tflops']:.0f}" if r["peak_tflops"] else "unknown"
    lines = [f"| encoder ({'tiny' if r['tiny'] else 'real size'}, {r['device']}) | clips/s | GFLOP / clip | TFLOP/s | "
             f"of peak ({peak} TFLOP/s) | GPU busy |", "|---|---|---|---|---|---|"]
    for x in r["rows"]:
        frac = f"{x['peak_fraction']:.1%}" if x["peak_fraction"] is not None else "-"
        busy = f"{x['busy']:.0%}" if x["busy"] is not None else "-"
        lines.append(f"| {x['encoder']} | {x['clips_per_s']:.2f} | {x['gflop_per_clip']:.1f} | {x['tflops']:.3f} | "
                     f"{frac} | {busy} |")
    d = r["decode"]
    lines.append(f"| decode ({d['workers']} processes, frames every 2 s + 16 kHz audio) | {d['clips_per_s']:.2f} | - | - | "
                 f"- | encoders together consume {r['encoders_consume_clips_per_s']:.2f} clips/s "
                 f"(decode / consume = {d['clips_per_s'] / r['encoders_consume_clips_per_s']:.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="few-layer models (CPU smoke run)")
    ap.add_argument("--device", help="default: cuda when there is one")
    ap.add_argument("--seconds", type=float, default=None, help="timed seconds per encoder (default 20; --tiny 0.5)")
    ap.add_argument("--clip-seconds", type=float, default=8.0)
    ap.add_argument("--tokens", type=int, default=24, help="greedy tokens Whisper writes per window")
    ap.add_argument("--batch", type=int, default=None, help="clips per call (default 32; --tiny 2)")
    ap.add_argument("--decode-clips", type=int, default=None, help="default 64; --tiny 4")
    ap.add_argument("--workers", type=int, default=None, help="decoder processes (default: the engine's)")
    ap.add_argument("--write-md")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    r = run(a.tiny, a.device, a.seconds or (0.5 if a.tiny else 20.0), a.clip_seconds, a.tokens,
            a.batch or (2 if a.tiny else 32), a.decode_clips or (4 if a.tiny else 64), a.workers)
    print(table(r))
    print(f"models built in {r['build_s']} s; whole run {r['total_s']} s; {r['uptime']}")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    if a.write_md:
        md = Path(a.write_md)
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(f"# One GPU, four encoders at real size\n\nDevice: {r['gpu']} ({r['device']}); made by "
                      f"`benchmarks/gpu.py`; {r['uptime']}.\n\n{table(r)}\n")
        md.with_name(md.stem + ".json").write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
