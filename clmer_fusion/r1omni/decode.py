"""Prompts, gate weights and batched greedy decoding from tower outputs.

The prompt follows R1-Omni's inference: a user turn ``<video>\\n<audio>\\n``
+ instruction in the tokenizer's chat template, with ``<video>`` and
``<audio>`` wrapped in ``<vi_start>...<vi_end>`` / ``<au_start>...<au_end>``
and replaced by the projected features. The gate reads the bare instruction.
One instruction gives one prompt length, so a batch needs no padding.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from clmer_features.errors import ClmerError
from clmer_fusion.r1omni.defaults import DEFAULT_INSTRUCTION, DEFAULT_MAX_NEW_TOKENS
from clmer_fusion.r1omni.load import LoadedR1Omni
from clmer_fusion.r1omni.model import AUDIO_SLOT, VIDEO_SLOT
from clmer_fusion.r1omni.parse import parse_output

SLOTS = {"<video>": VIDEO_SLOT, "<audio>": AUDIO_SLOT}
WRAP = {"<video>": "<vi_start><video><vi_end>", "<audio>": "<au_start><audio><au_end>"}
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def _chatml(content: str) -> str:
    """Qwen2's chat layout, used when a tokenizer ships no chat template."""
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
    )


def build_prompt(tokenizer: Any, instruction: str, modalities: Sequence[str], use_x_start_end: bool = True) -> str:
    """The prompt text with ``<video>``/``<audio>`` placeholders still in it."""
    slots = "\n".join(f"<{m}>" for m in modalities)
    content = f"{slots}\n{instruction}" if slots else instruction
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = _chatml(content)
    if use_x_start_end:
        for token, wrapped in WRAP.items():
            text = text.replace(token, wrapped)
    return text


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of ``prompt`` with each placeholder replaced by its slot id."""
    ids: list[int] = []
    for chunk in re.split(r"(<video>|<audio>)", prompt):
        if chunk in SLOTS:
            ids.append(SLOTS[chunk])
        elif chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return ids


# generation_config.json keys greedy decoding cannot honour: refused rather than ignored
UNSUPPORTED = {"no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": None,
               "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
               "forced_eos_token_id": None, "sequence_bias": None, "exponential_decay_length_penalty": None,
               "num_beams": 1, "penalty_alpha": None, "diversity_penalty": 0.0}
# sampling keys: the official inference passes do_sample=False, so generate ignores them
SAMPLING = ("do_sample", "temperature", "top_p", "top_k", "typical_p", "min_p", "epsilon_cutoff", "eta_cutoff")


@dataclass
class GenerationSettings:
    """What the checkpoint's generation_config.json changes in greedy decoding, as HF generate applies it
    under the official call (do_sample=False): a repetition penalty over the generated tokens, more stop ids."""

    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = ()
    source: str = "none"
    ignored: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"repetition_penalty": self.repetition_penalty, "eos_token_ids": list(self.eos_token_ids),
                "generation_config": self.source, "ignored_as_in_greedy": self.ignored}


def read_generation_config(model_dir: str | Path) -> GenerationSettings:
    """The checkpoint's ``generation_config.json`` (absent: plain greedy). Keys greedy decoding cannot
    honour raise a ClmerError naming the file and key."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return GenerationSettings()
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ClmerError(f"{path}: not valid JSON ({exc})") from None
    for key, neutral in UNSUPPORTED.items():
        if cfg.get(key, neutral) not in (neutral, None, [], 0) and not (key == "num_beams" and cfg[key] == 1):
            raise ClmerError(f"{path}: {key}={cfg[key]!r} is not supported by this decoder (greedy, as the official "
                             "inference); remove it or decode with the official code")
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
    return GenerationSettings(repetition_penalty=float(cfg.get("repetition_penalty") or 1.0), eos_token_ids=eos_ids,
                              source=str(path), ignored={k: cfg[k] for k in SAMPLING if k in cfg})


@dataclass
class Generation:
    """One clip's decoded output."""

    text: str
    think: str | None
    answer: str | None
    format_ok: bool
    tokens: list[int] = field(default_factory=list)


class R1OmniDecoder:
    """Decode batches of clips from cached (or freshly computed) tower outputs.

    Gate weights are computed once per instruction and reused for every batch.
    """

    def __init__(self, loaded: LoadedR1Omni, instruction: str = DEFAULT_INSTRUCTION,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, generation: GenerationSettings | None = None):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.instruction = instruction
        self.max_new_tokens = int(max_new_tokens)
        self.generation = generation if generation is not None else read_generation_config(loaded.report.model_dir)
        self._gates: dict[str, torch.Tensor] = {}
        self._ids: dict[tuple[str, ...], list[int]] = {}
        vocab = self.tokenizer.get_vocab()
        stops = {vocab[t] for t in STOP_TOKENS if t in vocab}
        if self.tokenizer.eos_token_id is not None:
            stops.add(int(self.tokenizer.eos_token_id))
        stops.update(self.generation.eos_token_ids)
        if not stops:
            raise ValueError("tokenizer has no end-of-sequence token; cannot tell when an answer ends")
        self.stop_ids = stops
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(stops))

    @property
    def gate_calls(self) -> int:
        """How many times the gate ran (one per distinct instruction)."""
        return len(self._gates)

    def gate(self, instruction: str | None = None) -> torch.Tensor:
        """Branch weights ``[1, 3]`` for an instruction (computed once, then cached)."""
        text = instruction or self.instruction
        if text not in self._gates:
            enc = self.loaded.bert_tokenizer([text], return_tensors="pt", padding=True, truncation=True)
            self._gates[text] = self.model.gate_weights(dict(enc))
        return self._gates[text]

    def ids(self, modalities: tuple[str, ...]) -> list[int]:
        if modalities not in self._ids:
            prompt = build_prompt(self.tokenizer, self.instruction, modalities, self.model.cfg.use_x_start_end)
            self._ids[modalities] = prompt_ids(self.tokenizer, prompt)
        return self._ids[modalities]

    @torch.no_grad()
    def decode(self, vision: np.ndarray | torch.Tensor | None, audio: np.ndarray | torch.Tensor | None) -> list[Generation]:
        """Decode a batch: ``vision [B, T, N, C]`` and/or ``audio [B, R, C]`` tower outputs."""
        modalities = tuple(m for m, x in (("video", vision), ("audio", audio)) if x is not None)
        if not modalities:
            raise ValueError("decode needs video or audio features")
        v = a = None
        if vision is not None:
            v = self.model.project_video(torch.as_tensor(vision), self.gate())
        if audio is not None:
            a = self.model.project_audio(torch.as_tensor(audio))
        embeds = self.model.embed_prompt(self.ids(modalities), v, a)
        rows = self.model.greedy(embeds, self.max_new_tokens, self.stop_ids, self.pad_id,
                                 repetition_penalty=self.generation.repetition_penalty)
        out = []
        for toks in rows:
            text = self.tokenizer.decode(toks, skip_special_tokens=True).strip()
            think, answer, ok = parse_output(text)
            out.append(Generation(text=text, think=think, answer=answer, format_ok=ok, tokens=toks))
        return out
