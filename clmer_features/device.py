"""Where models run: the one rule that turns ``--device auto|cpu|cuda[:N]`` into a device."""
from __future__ import annotations

from clmer_features.errors import ClmerError


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU in this process (False without torch)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cpu``/``cuda``/``cuda:N`` as
    given, with one clear error for anything else or for cuda without a GPU."""
    device = str(device)
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ClmerError(f"--device must be cpu, cuda, cuda:N or auto, not {device!r}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise ClmerError(f"--device {device}: no CUDA GPU is visible to torch (use --device cpu or auto)")
    return device
