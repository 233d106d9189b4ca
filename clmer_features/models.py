"""Where model weights live, and their digest. Nothing here ever downloads.

A model is a local folder laid out like a hub repo. For a feature, the folder
is found from (first match wins):

1. ``--model FEATURE=PATH`` (``overrides``): that folder exactly;
2. ``--models-dir DIR``: ``DIR/<hub id>``, e.g. ``DIR/google/siglip-base-patch16-224``;
3. the environment variable ``CLMER_MODELS_DIR``: same layout.

The weights digest (sha256 over the weight files' names and bytes) goes into
the feature spec, so other weights give another spec, never a mixed cache.

The weight proof: a loader reads a checkpoint with :func:`load_state_safely`
(safetensors, or ``torch.load(weights_only=True)``: nothing in the file runs)
and, once the model is built and loaded, calls :func:`prove_loaded`, which
compares every tensor of the model with the file's, value for value, and
refuses the folder with one line when any is missing, unused or different.
The digest in the spec then names the numbers the features came from.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# --- weight proof ----------------------------------------------------------------
# Every loader reads its checkpoint through :func:`load_state_safely` (no pickle
# code runs) and ends with :func:`prove_loaded` (every tensor the model holds is,
# value for value, the file's). A folder that fails either is refused with one line.

class WeightsNotLoadedError(ModelNotFoundError):
    """A model's tensors are not (all) the checkpoint's, or the checkpoint cannot be read safely."""


# Nesting a training checkpoint may wrap its state dict in (funasr/fairseq, lightning).
_STATE_WRAPPERS = ("state_dict", "model_state_dict", "model")
# transformers' legacy names, renamed at load for every model ("legacy" conversion mapping).
_LEGACY_RENAMES = (("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias"))


class SafetensorsState(Mapping):
    """The tensors of one or more ``.safetensors`` files, read one at a time when asked
    (memory stays at one tensor, however large the model)."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self._where: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    self._where[k] = f
        self._open: dict[Path, Any] = {}

    def __getitem__(self, key: str) -> Any:
        from safetensors import safe_open

        f = self._where[key]
        if f not in self._open:
            self._open[f] = safe_open(str(f), framework="pt")
        return self._open[f].get_tensor(key)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def load_state_safely(path: str | Path) -> Mapping[str, Any]:
    """The tensors of one checkpoint file, name -> tensor, without running any code from it.

    ``.safetensors``: read by safetensors (lazily). Anything else (``.pt``, ``.bin``,
    ``.pth``, ``.ckpt``): ``torch.load(weights_only=True)``, memory-mapped when the file
    is torch's zip format, so a pickled payload is refused, never run; the state dict is
    unwrapped from ``state_dict`` / ``model_state_dict`` / ``model`` and a leading
    ``module.`` (DataParallel) is dropped; entries that are not tensors are dropped.
    WeightsNotLoadedError (one line) when the file cannot be read this way.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsNotLoadedError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        try:
            return SafetensorsState([p])
        except Exception as exc:  # noqa: BLE001 - a damaged header is the user's to fix
            raise WeightsNotLoadedError(f"checkpoint {p} is not a readable safetensors file ({_first_line(exc)})") from None
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global: code, not tensors
        raise WeightsNotLoadedError(
            f"checkpoint {p} asks to run code while loading (refused; only tensors are read: "
            f"{_first_line(exc)})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise WeightsNotLoadedError(f"checkpoint {p} cannot be read ({_first_line(exc)})") from None
    for key in _STATE_WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsNotLoadedError(f"checkpoint {p} holds a {type(obj).__name__}, not a state dict")
    state = {
        (k[len("module."):] if k.startswith("module.") else k): v
        for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
    }
    if not state:
        raise WeightsNotLoadedError(f"checkpoint {p} holds no tensors")
    return state


def folder_state(model_dir: str | Path) -> Mapping[str, Any]:
    """All tensors of a transformers folder: its ``*.safetensors`` (every shard), else its
    ``pytorch_model*.bin`` (read with weights_only=True)."""
    d = Path(model_dir)
    shards = sorted(d.glob("*.safetensors"))
    if shards:
        try:
            return SafetensorsState(shards)
        except Exception as exc:  # noqa: BLE001
            raise WeightsNotLoadedError(f"model folder {d}: a safetensors file is unreadable ({_first_line(exc)})") from None
    bins = sorted(d.glob("pytorch_model*.bin"))
    if not bins:
        raise WeightsNotLoadedError(f"model folder {d} holds no *.safetensors or pytorch_model*.bin")
    state: dict[str, Any] = {}
    for b in bins:
        state.update(load_state_safely(b))
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _few(keys: list[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (f" ... (+{len(keys) - limit})" if len(keys) > limit else "")


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _model_key(key: str, own: Mapping[str, Any], prefix: str) -> str | None:
    """The model's name for a checkpoint tensor: as is, with transformers' legacy
    renames, or with the base model prefix added or removed (as from_pretrained does)."""
    names = [key]
    for old, new in _LEGACY_RENAMES:
        if old in key:
            names.append(key.replace(old, new))
    for name in list(names):
        if prefix and name.startswith(prefix + "."):
            names.append(name[len(prefix) + 1:])
        elif prefix:
            names.append(f"{prefix}.{name}")
    return next((n for n in names if n in own), None)


def _same_values(file_tensor: Any, model_tensor: Any) -> bool:
    """The file's tensor, cast as the model was cast, equals the model's bit for bit."""
    import torch

    t = file_tensor.to(device=model_tensor.device, dtype=model_tensor.dtype)
    if model_tensor.is_floating_point() and model_tensor.element_size() in (2, 4, 8):
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[model_tensor.element_size()]
        return torch.equal(t.contiguous().view(view), model_tensor.contiguous().view(view))
    return torch.equal(t, model_tensor)


@dataclass
class WeightProof:
    """What :func:`prove_loaded` compared: tensors equal to the file's, tied ones, unused ones."""

    compared: int = 0
    tied: list[str] = field(default_factory=list)
    allowed_missing: list[str] = field(default_factory=list)
    unused: int = 0


def prove_loaded(
    model: Any,
    state: Mapping[str, Any],
    feature: str,
    folder: str | Path,
    *,
    allowed_missing: tuple[str, ...] = (),
    unused: tuple[str, ...] = (),
) -> WeightProof:
    """Prove every tensor ``model`` holds came from ``state`` (the checkpoint), value for value.

    - each of the model's parameters and persistent buffers must equal, bit for bit
      (after the cast the loader applied, e.g. fp16 on a GPU), the checkpoint tensor
      of its name; a tensor tied to (sharing memory with) a proven one is proven;
    - ``allowed_missing``: glob patterns of model tensors the checkpoint need not hold
      (computed buffers, heads the caller never runs);
    - every checkpoint tensor must be used by the model unless it matches ``unused``
      (glob patterns: another tower, an EMA teacher, a head this class lacks), so a
      renamed tensor cannot be skipped silently.

    Raises WeightsNotLoadedError with one line naming ``feature``, ``folder`` and what is
    missing / unused / different. Cost: one read and one compare per tensor.
    """
    import torch

    own = model.state_dict()
    # buffers the model computes and does not save (e.g. position_ids): a checkpoint that
    # holds one anyway must hold the same values, but need not hold it
    computed = {k: v for k, v in model.named_buffers() if k not in own}
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    proof = WeightProof()
    covered: set[str] = set()
    stray: list[str] = []
    differ: list[str] = []
    with torch.no_grad():
        for key in state:
            m = _model_key(key, own, prefix)
            if m is None and (c := _model_key(key, computed, prefix)) is not None:
                if tuple(state[key].shape) != tuple(computed[c].shape) or not _same_values(state[key], computed[c]):
                    differ.append(c)
                continue
            if m is None:
                if _matches(key, unused):
                    proof.unused += 1
                else:
                    stray.append(key)
                continue
            t = state[key]
            if tuple(t.shape) != tuple(own[m].shape):
                differ.append(f"{m} (shape {tuple(own[m].shape)} != file {tuple(t.shape)})")
            elif not _same_values(t, own[m]):
                differ.append(m)
            else:
                covered.add(m)
                proof.compared += 1
    proven_ptrs = {(own[k].data_ptr(), tuple(own[k].shape)) for k in covered if own[k].numel()}
    missing: list[str] = []
    for k, v in own.items():
        if k in covered or any(d.split(" ")[0] == k for d in differ):
            continue
        if v.numel() and (v.data_ptr(), tuple(v.shape)) in proven_ptrs:
            proof.tied.append(k)
        elif _matches(k, allowed_missing):
            proof.allowed_missing.append(k)
        else:
            missing.append(k)
    problems = []
    if missing:
        problems.append(f"{len(missing)} model tensor(s) not in the checkpoint (random weights): {_few(sorted(missing))}")
    if differ:
        problems.append(f"{len(differ)} tensor(s) differ from the file: {_few(sorted(differ))}")
    if stray:
        problems.append(f"{len(stray)} checkpoint tensor(s) the model does not use: {_few(sorted(stray))}")
    if problems:
        raise WeightsNotLoadedError(f"{feature}: model folder {folder}: weights not loaded: " + "; ".join(problems))
    return proof

