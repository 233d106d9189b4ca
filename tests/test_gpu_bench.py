"""benchmarks/gpu.py runs end to end with --tiny on the CPU and reports sane numbers."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gpu_bench():
    spec = importlib.util.spec_from_file_location("clmer_bench_gpu", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_tiny_on_cpu(tmp_path, capsys):
    gpu = _gpu_bench()
    out = tmp_path / "gpu.json"
    assert gpu.main(["--tiny", "--device", "cpu", "--seconds", "0.1", "--decode-clips", "2", "--clip-seconds", "4", "--workers", "0",
                     "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    rows = {x["encoder"]: x for x in r["rows"]}
    assert set(rows) == {"siglip", "emotion2vec", "whisper per-clip", "whisper packed", "bert"}
    for x in rows.values():
        assert x["clips_per_s"] > 0 and x["flop_per_clip"] > 0 and x["calls"] >= 1
        assert x["busy"] is None and x["peak_fraction"] is None  # no GPU, no NVML samples, no peak
    # 4 s clips: 6 share a 30 s window, so packed Whisper does a sixth of the work per clip
    assert rows["whisper per-clip"]["flop_per_clip"] / rows["whisper packed"]["flop_per_clip"] == 6
    assert r["decode"]["clips"] == 2 and r["decode"]["failed"] == 0 and r["decode"]["clips_per_s"] > 0
    assert "encoders together consume" in capsys.readouterr().out
    assert gpu.peak_tflops("NVIDIA H200") == 989.0 and gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops("Some New Card") is None
