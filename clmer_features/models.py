"""Where model weights live, and their digest. Nothing here ever downloads.

A model is a local folder laid out like a hub repo. For a feature, the folder
is found from (first match wins):

1. ``--model FEATURE=PATH`` (``overrides``): that folder exactly;
2. ``--models-dir DIR``: ``DIR/<hub id>``, e.g. ``DIR/google/siglip-base-patch16-224``;
3. the environment variable ``CLMER_MODELS_DIR``: same layout.

The weights digest (sha256 over the weight files' names and bytes) goes into
the feature spec, so other weights give another spec, never a mixed cache.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

from clmer_features.errors import ModelNotFoundError

ENV_MODELS_DIR = "CLMER_MODELS_DIR"

# Files whose bytes are the model's numbers.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".npz", ".h5", ".msgpack")

_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DISABLE_TELEMETRY": "1",
}


def ensure_offline() -> None:
    """Tell every hub-aware library (transformers, huggingface_hub) to stay offline."""
    for k, v in _OFFLINE_ENV.items():
        os.environ[k] = v
    try:  # huggingface_hub reads the variable at import; flip the constant too if loaded
        import sys

        consts = sys.modules.get("huggingface_hub.constants")
        if consts is not None:
            consts.HF_HUB_OFFLINE = True
    except Exception:  # noqa: BLE001
        pass


def quiet_transformers() -> None:
    """No load reports, no weight-loading progress bars (the engine has its own bar)."""
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except Exception:  # noqa: BLE001
        pass


def parse_overrides(items: list[str] | tuple[str, ...] | None) -> dict[str, Path]:
    """Parse ``FEATURE=PATH`` strings (the ``--model`` option) into a dict."""
    out: dict[str, Path] = {}
    for item in items or ():
        feature, sep, path = item.partition("=")
        if not sep or not feature.strip() or not path.strip():
            raise ModelNotFoundError(f"--model {item!r}: expected FEATURE=PATH, e.g. siglip=/models/siglip")
        out[feature.strip()] = Path(path.strip()).expanduser()
    return out


def resolve_model_dir(
    feature: str,
    models_dir: str | Path | None = None,
    overrides: Mapping[str, str | Path] | None = None,
    default_model: str | None = None,
) -> Path:
    """The local folder holding ``feature``'s model; ModelNotFoundError if none.

    ``default_model`` is the hub id looked up under a models dir; when None it
    is the registered extractor's ``default_model``.
    """
    if overrides and feature in overrides:
        path = Path(overrides[feature]).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(f"--model {feature}={path}: no such folder")
        return path.resolve()
    if default_model is None:
        from clmer_features.extractors import get_extractor

        default_model = get_extractor(feature).default_model
    tried: list[str] = []
    roots: list[tuple[str, Path]] = []
    if models_dir:
        roots.append(("--models-dir", Path(models_dir).expanduser()))
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        roots.append((ENV_MODELS_DIR, Path(env).expanduser()))
    for origin, root in roots:
        cand = root / default_model if default_model else root
        if cand.is_dir():
            return cand.resolve()
        tried.append(f"{origin}: {cand}")
    where = "; ".join(tried) if tried else "no --models-dir, no $" + ENV_MODELS_DIR + ", no --model"
    raise ModelNotFoundError(
        f"no model folder for feature {feature!r} (hub id {default_model or '?'}); tried {where}. "
        f"Put the model at DIR/{default_model or '<hub id>'} and pass --models-dir DIR, "
        f"or pass --model {feature}=PATH (nothing is downloaded)"
    )


def weight_files(model_dir: str | Path) -> list[Path]:
    """The weight files under ``model_dir`` (recursive), sorted by relative path."""
    root = Path(model_dir)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


_digest_cache: dict[tuple, str] = {}


def weights_digest(model_dir: str | Path) -> str:
    """sha256 (hex) over the weight files' relative names and bytes.

    Cached per process by (path, size, mtime) of every weight file, so a run
    that plans several times hashes each model once.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelNotFoundError(f"model folder {root} does not exist")
    files = weight_files(root)
    if not files:
        raise ModelNotFoundError(
            f"model folder {root} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})"
        )
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    cached = _digest_cache.get(stamp)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        h.update(b"\0")
    digest = h.hexdigest()
    _digest_cache[stamp] = digest
    return digest


def require_files(model_dir: Path, names: tuple[str, ...], feature: str) -> None:
    """Raise ModelNotFoundError naming the first of ``names`` missing from the folder."""
    for n in names:
        if not (Path(model_dir) / n).exists():
            raise ModelNotFoundError(f"model folder {model_dir} for {feature!r} lacks {n}")
