"""What the Hugging Face families share: loading a folder, picking a layer, pooling rows.

Layers (``layer``): ``"last"`` is the model's own output (``last_hidden_state``,
after any final norm the model applies); ``"sum_last4"`` / ``"mean_last4"`` add /
average ``hidden_states[-4:]`` (MERTools sums the last 4 for its audio and text
features); an integer string such as ``"-1"`` or ``"12"`` picks
``hidden_states[i]`` (index 0 is the embeddings; in several models, e.g.
DINOv2 or large wav2vec2-style encoders, ``hidden_states[-1]`` is taken
*before* the final layer norm, so it differs from ``"last"``).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clmer_features.errors import ClmerError, ModelNotFoundError
from clmer_features.spec import FeatureSpec
from clmer_features.models import (
    ensure_offline, folder_state, prove_loaded, quiet_transformers, require_files, weights_digest,
)

__all__ = ["weights_digest"]  # re-exported: the families take everything model-related from here

LAYER_NAMES = ("last", "sum_last4", "mean_last4")
LAYER_HELP = ("hidden layer: last (the model's output), sum_last4 / mean_last4 (of hidden_states[-4:], "
              "MERTools sums them), or an index into hidden_states such as -1 or 12")

# Files besides the weights whose bytes change the numbers: model config, pre-processing, vocabularies,
# sentence-transformers pooling. Their digest goes into the spec.
NUMBER_FILES = ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model",
                "spiece.model", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json")


def check_layer(feature: str, layer: Any) -> str:
    """``layer`` as its canonical string, or a one-line ClmerError naming the allowed values."""
    text = str(layer).strip()
    if text in LAYER_NAMES:
        return text
    try:
        return str(int(text))
    except ValueError:
        raise ClmerError(f"{feature}.layer: expected one of {', '.join(LAYER_NAMES)} or a hidden-state index "
                         f"such as -1 or 12, got {layer!r}") from None


def needs_hidden_states(layer: str) -> bool:
    return layer != "last"


def pick_layer(out: Any, layer: str) -> Any:
    """The [B, T, D] tensor ``layer`` names from a model output (``output_hidden_states`` on unless "last")."""
    if layer == "last":
        return out.last_hidden_state
    hs = out.hidden_states
    if layer in ("sum_last4", "mean_last4"):
        if len(hs) < 5:
            raise ClmerError(f"layer {layer}: the model has only {len(hs) - 1} layers")
        s = hs[-4] + hs[-3] + hs[-2] + hs[-1]  # one fixed order: the numbers do not depend on the batch
        return s if layer == "sum_last4" else s / 4
    i = int(layer)
    if not -len(hs) <= i < len(hs):
        raise ClmerError(f"layer {layer}: the model has hidden states 0..{len(hs) - 1}")
    return hs[i]


def model_folder(ext: Any) -> Path:
    """The extractor's model folder, or one line saying how to give it."""
    if ext.model_dir is None:
        raise ModelNotFoundError(f"{ext.name} needs a model folder: --models-dir DIR holding "
                                 f"DIR/{ext.default_model or '<hub id>'}, or --model {ext.name}=DIR")
    require_files(Path(ext.model_dir), ("config.json",), ext.name)
    return Path(ext.model_dir)


def family_spec(ext: Any, params: dict[str, Any]) -> FeatureSpec:
    """A family extractor's spec: its feature name, the family that computes it, the preset's hub id,
    the digests of the folder's weights and number-changing files, and ``params``. Paths stay out:
    the digests say which folder."""
    folder = model_folder(ext)
    return FeatureSpec.create(
        ext.name, extractor=ext.preset_of or ext.name, model_id=ext.default_model or "-",
        weights_digest=weights_digest(folder), format_version=ext.format_version,
        params={**params, "files": files_digest(folder)},
    )


def files_digest(model_dir: Path) -> str:
    """sha256 (16 hex) over the folder's non-weight files that change the numbers (:data:`NUMBER_FILES`)."""
    h = hashlib.sha256()
    for name in NUMBER_FILES:
        p = Path(model_dir) / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def outside_base(state_keys: Any, prefix: str) -> tuple[str, ...]:
    """Checkpoint tensors outside the base model (a task head, a pretraining decoder) when the
    checkpoint is a ``XxxForYyy`` one (its base tensors carry ``prefix.``); else none. ``AutoModel``
    builds the base model only, so these are the tensors it leaves unused."""
    keys = list(state_keys)
    if not prefix or not any(k.startswith(prefix + ".") for k in keys):
        return ()
    return tuple(k for k in keys if not k.startswith(prefix + "."))


class RenamedState(Mapping):
    """A checkpoint's tensors under the names transformers gives them while loading ``model``.

    transformers (5.x) renames some checkpoint tensors at load through its conversion mapping
    (VideoMAE's ``q_bias`` becomes ``query.bias``, DINOv2's ``attention.attention.query`` becomes
    ``attention.q_proj``, weight-norm ``weight_g``/``weight_v`` become parametrizations), so the
    proof must compare each file tensor with the model tensor it became. Only renamings are
    applied: a tensor that a converter splits or merges keeps its file name, and the proof then
    refuses it rather than guess.
    """

    def __init__(self, state: Mapping[str, Any], model: Any):
        self._state = state
        self._names = {self._rename(k, model): k for k in state} if state else {}

    @staticmethod
    def _renamer(model: Any) -> Any:
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import WeightRenaming, rename_source_key
        except ImportError:  # transformers 4.x: no conversion mapping beyond the legacy renames
            return None
        ren = [t for t in get_model_conversion_mapping(model) if type(t) is WeightRenaming]
        return lambda key: rename_source_key(key, ren, [])[0]

    def _rename(self, key: str, model: Any) -> str:
        if not hasattr(self, "_fn"):
            self._fn = self._renamer(model)
        return self._fn(key) if self._fn is not None else key

    def __getitem__(self, key: str) -> Any:
        return self._state[self._names[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def load_model(model_dir: Path, feature: str, *, device: str, unused_pooler: bool = False) -> Any:
    """The folder's model through ``AutoModel`` (the base model of any checkpoint of its kind),
    in eval mode, fp16 on CUDA, proven tensor by tensor to hold the folder's weights
    (:func:`clmer_features.models.prove_loaded`). A task head or pretraining decoder in the
    file is left unused, as ``AutoModel`` does. ``unused_pooler``: the caller never uses the
    pooler, so a checkpoint may lack it (masked-LM checkpoints do); it is then removed, so its
    random weights can never reach a number."""
    require_files(model_dir, ("config.json",), feature)
    ensure_offline()
    quiet_transformers()
    import torch
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotFoundError(f"{model_dir}: {feature} cannot load it with AutoModel: "
                                 f"{str(exc).strip().splitlines()[0]}") from None
    model.eval()
    if device.startswith("cuda"):
        model = model.to(device, dtype=torch.float16)
    state = RenamedState(folder_state(model_dir), model)
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    prove_loaded(model, state, feature, model_dir, unused=outside_base(state, prefix),
                 allowed_missing=("pooler.*",) if unused_pooler else ())
    if unused_pooler and getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def load_processor(model_dir: Path, feature: str, auto_class: str) -> Any:
    """The folder's processor via ``transformers.<auto_class>``; image processors in their PIL
    flavour (no torchvision, so every machine computes the same pixels)."""
    ensure_offline()
    quiet_transformers()
    import transformers

    cls = getattr(transformers, auto_class)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if auto_class == "AutoImageProcessor":
        kwargs["backend"] = "pil"
    try:
        return cls.from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(f"{model_dir}: {feature} cannot load its {auto_class}: "
                                 f"{str(exc).splitlines()[0]}") from None


def to_numpy(t: Any) -> np.ndarray:
    return t.float().cpu().numpy()


def mean_rows(rows: np.ndarray) -> np.ndarray:
    """The utterance vector: the mean of a clip's rows (MERTools' UTT), float32."""
    return rows.astype(np.float32).mean(axis=0)
