"""Load an R1-Omni checkpoint folder without its towers.

A folder holds ``config.json`` (``model_type`` ``HumanOmni_qwen2``: Qwen2
fields plus ``mm_*`` fields), one or more ``*.safetensors`` files and the
Qwen2 tokenizer files. BERT's tokenizer (``vocab.txt``) comes from a
bert-base-uncased folder: ``bert_dir``, else ``<model>/bert-base-uncased`` or
``<model>/bert``; its ``config.json`` (if any) shapes the gate's BERT, whose
weights come from the checkpoint. Tower weights in the checkpoint
(``model.vision_tower.*``, ``model.audio_tower.*``) are skipped, never built.
Missing or unexpected keys are refused unless ``allow_mismatch``; every loaded
tensor is then proven equal to the file's (``clmer_features.models.prove_loaded``).
Nothing is downloaded and no remote code runs.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clmer_features.errors import ClmerError, ModelNotFoundError
from clmer_features.models import prove_loaded
from clmer_fusion.r1omni.model import R1OmniConfig, R1OmniModel

TOWER_PREFIXES = ("model.vision_tower.", "model.audio_tower.")
# Buffers older transformers versions saved; harmless when absent from the model.
BENIGN_SUFFIXES = ("embeddings.position_ids", "rotary_emb.inv_freq")
GATE_KEY = "model.bert_gate.0.weight"


class CheckpointMismatchError(ClmerError):
    """The checkpoint's keys or shapes do not match the model built from its config."""


@dataclass
class LoadReport:
    """What loading found: which keys were skipped, missing or unexpected."""

    model_dir: str
    n_loaded: int = 0
    tower_keys_skipped: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    tied_lm_head: bool = False
    fingerprint: str = ""
    tokenizer: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def describe(self, limit: int = 5) -> str:
        def few(keys: list[str]) -> str:
            more = f" ... (+{len(keys) - limit})" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = [f"{self.n_loaded} tensors loaded", f"{self.tower_keys_skipped} tower tensors skipped"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {few(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {few(self.unexpected)}")
        if self.shape_mismatch:
            parts.append(f"{len(self.shape_mismatch)} wrong shape: {few(self.shape_mismatch)}")
        return "; ".join(parts)


@dataclass
class LoadedR1Omni:
    model: R1OmniModel
    tokenizer: Any
    bert_tokenizer: Any
    report: LoadReport


def _safetensor_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"{model_dir}: no *.safetensors files (an R1-Omni checkpoint folder?)")
    return files


def _fingerprint(model_dir: Path, files: list[Path]) -> str:
    """Cheap identity of a checkpoint: config bytes + weight file names, sizes, mtimes."""
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def find_bert_dir(model_dir: Path, bert_dir: str | Path | None) -> Path:
    """The folder holding BERT's vocab.txt for the instruction gate."""
    if bert_dir is not None:
        cands = [Path(bert_dir)]
    else:
        cands = [model_dir / "bert-base-uncased", model_dir / "bert"]
        env = os.environ.get("CLMER_MODELS_DIR")
        if env:
            cands.append(Path(env) / "bert-base-uncased")
    for c in cands:
        if (c / "vocab.txt").is_file():
            return c
    raise ModelNotFoundError(
        f"R1-Omni's gate needs bert-base-uncased's tokenizer (vocab.txt); looked in "
        f"{', '.join(str(c) for c in cands)}. Pass --bert DIR (nothing is downloaded)"
    )


def read_checkpoint(files: list[Path]) -> tuple[dict[str, torch.Tensor], int]:
    """All tensors but the towers' (never read into memory), and how many were skipped."""
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    towers = 0
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                if k.startswith(TOWER_PREFIXES):
                    towers += 1
                else:
                    state[k] = fh.get_tensor(k)
    return state, towers


def load_r1omni(
    model_dir: str | Path,
    *,
    bert_dir: str | Path | None = None,
    allow_mismatch: bool = False,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedR1Omni:
    """Build the tower-free model from ``model_dir`` and load its weights.

    ``dtype`` defaults to float16 on CUDA and float32 on CPU.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer, BertConfig, BertTokenizer, Qwen2Config

    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ModelNotFoundError(f"{model_dir}: no config.json (an R1-Omni checkpoint folder?)")
    raw = json.loads(cfg_path.read_text())
    files = _safetensor_files(model_dir)
    state, towers = read_checkpoint(files)

    gate = state.get(GATE_KEY)
    try:
        cfg = R1OmniConfig.from_json(raw, gate_hidden=gate.shape[0] if gate is not None else None)
    except (KeyError, ValueError) as exc:
        raise CheckpointMismatchError(f"{cfg_path}: {exc}") from None
    qwen_fields = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "auto_map")}
    qwen_config = Qwen2Config(**qwen_fields)
    bdir = find_bert_dir(model_dir, bert_dir)
    bert_config = BertConfig.from_pretrained(str(bdir)) if (bdir / "config.json").is_file() else BertConfig()

    # Every weight comes from the checkpoint unless mismatches are allowed: skip the random
    # initialisation then (10 s for a 0.5B model on a CPU); buffers are still computed.
    from contextlib import nullcontext

    from transformers.initialization import no_init_weights

    torch.manual_seed(0)  # with allow_mismatch, missing weights are random: the same random each run
    with nullcontext() if allow_mismatch else no_init_weights():
        model = R1OmniModel(cfg, qwen_config, bert_config)
    report = LoadReport(model_dir=str(model_dir), tower_keys_skipped=towers, fingerprint=_fingerprint(model_dir, files))
    own = model.lm.state_dict()
    for k in list(state):
        if k.endswith(BENIGN_SUFFIXES) and k not in own:
            state.pop(k)
    report.unexpected = sorted(k for k in state if k not in own)
    report.shape_mismatch = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in state if k in own and state[k].shape != own[k].shape
    )
    missing = sorted(k for k in own if k not in state)
    if "lm_head.weight" in missing and getattr(qwen_config, "tie_word_embeddings", False):
        missing.remove("lm_head.weight")
        report.tied_lm_head = True
    report.missing = missing
    if not report.ok and not allow_mismatch:
        raise CheckpointMismatchError(
            f"{model_dir}: checkpoint does not match the R1-Omni model: {report.describe()} "
            "(pass --allow-mismatch to load anyway)"
        )
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.lm.load_state_dict(loadable, strict=False)
    if report.tied_lm_head:
        model.lm.lm_head.weight = model.lm.model.embed_tokens.weight
    report.n_loaded = len(loadable)
    if dtype is None:
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    model.to(device=device, dtype=dtype).eval()
    # every tensor the model runs with is the checkpoint's, value for value (after the cast);
    # with allow_mismatch, the tensors the report names are the random ones it accepted
    accepted = tuple(report.missing) + tuple(k.split(" ")[0] for k in report.shape_mismatch)
    prove_loaded(model.lm, loadable if allow_mismatch else state, "r1omni", model_dir,
                 allowed_missing=accepted if allow_mismatch else ())

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # config.json's model_type is not a transformers one: expected
    try:
        # the official inference loads the slow tokenizer (use_fast=False: vocab.json + merges.txt)
        slow = (model_dir / "vocab.json").is_file() and (model_dir / "merges.txt").is_file()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=False) if slow else \
            AutoTokenizer.from_pretrained(str(model_dir))
        report.tokenizer = ("use_fast=False from vocab.json + merges.txt, as the official inference" if slow
                            else "tokenizer.json (no vocab.json + merges.txt for the official use_fast=False)")
    finally:
        hf_logging.set_verbosity(level)
    bert_tokenizer = BertTokenizer.from_pretrained(
        str(bdir), model_max_length=int(bert_config.max_position_embeddings)
    )
    return LoadedR1Omni(model=model, tokenizer=tokenizer, bert_tokenizer=bert_tokenizer, report=report)
