"""Prompts, gate weights and batched greedy decoding from tower outputs.

The prompt follows R1-Omni's inference: a user turn ``<video>\\n<audio>\\n``
+ instruction in the tokenizer's chat template, with ``<video>`` and
``<audio>`` wrapped in ``<vi_start>...<vi_end>`` / ``<au_start>...<au_end>``
and replaced by the projected features. The gate reads the bare instruction.
One instruction gives one prompt length, so a batch needs no padding.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from clmer_fusion.r1omni.defaults import DEFAULT_INSTRUCTION
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

    def __init__(self, loaded: LoadedR1Omni, instruction: str = DEFAULT_INSTRUCTION, max_new_tokens: int = 512):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.instruction = instruction
        self.max_new_tokens = int(max_new_tokens)
        self._gates: dict[str, torch.Tensor] = {}
        self._ids: dict[tuple[str, ...], list[int]] = {}
        vocab = self.tokenizer.get_vocab()
        stops = {vocab[t] for t in STOP_TOKENS if t in vocab}
        if self.tokenizer.eos_token_id is not None:
            stops.add(int(self.tokenizer.eos_token_id))
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
        rows = self.model.greedy(embeds, self.max_new_tokens, self.stop_ids, self.pad_id)
        out = []
        for toks in rows:
            text = self.tokenizer.decode(toks, skip_special_tokens=True).strip()
            think, answer, ok = parse_output(text)
            out.append(Generation(text=text, think=think, answer=answer, format_ok=ok, tokens=toks))
        return out
