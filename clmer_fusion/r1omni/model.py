"""The R1-Omni model minus its towers: projectors, instruction gate, Qwen2 LLM.

``R1OmniModel.lm`` is a transformers ``Qwen2ForCausalLM`` whose inner
``model`` also holds ``mm_projector``, ``audio_projector``, ``bert_model``
and ``bert_gate``: exactly the key names of a released checkpoint
(``model.mm_projector.s1_video.b1.conv1.conv.weight``, ``model.layers.0...``,
``lm_head.weight``), so its weights load with no renaming. The SigLIP and
Whisper towers are never built: their outputs come from the feature cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from clmer_fusion.r1omni.projectors import AllInOneSmall, bert_gate, mlp

# Placeholders in token id sequences (never real vocabulary ids).
VIDEO_SLOT = -201
AUDIO_SLOT = -202


@dataclass(frozen=True)
class R1OmniConfig:
    """What the checkpoint's config.json says about the multimodal parts."""

    hidden_size: int = 896
    vision_dim: int = 768  # mm_hidden_size: SigLIP width
    audio_dim: int = 1280  # audio_hidden_size: Whisper encoder width
    projector_type: str = "all_in_one_small"
    audio_projector_type: str = "mlp2x_gelu"
    projector_depth: int = 2
    gate_hidden: int = 3584
    num_frames: int = 8
    use_x_start_end: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, cfg: dict[str, Any], gate_hidden: int | None = None) -> "R1OmniConfig":
        ptype = cfg.get("mm_projector_type", "all_in_one_small")
        if ptype != "all_in_one_small":
            raise ValueError(
                f"mm_projector_type {ptype!r} is not supported (only 'all_in_one_small', R1-Omni's)"
            )
        atype = cfg.get("mm_audio_projector_type", "mlp2x_gelu")
        if not (atype.startswith("mlp") and atype.endswith("x_gelu")):
            raise ValueError(f"mm_audio_projector_type {atype!r} is not supported (only mlpNx_gelu)")
        return cls(
            hidden_size=int(cfg["hidden_size"]),
            vision_dim=int(cfg.get("mm_hidden_size", 768)),
            audio_dim=int(cfg.get("audio_hidden_size", 1280)),
            projector_type=ptype,
            audio_projector_type=atype,
            gate_hidden=int(gate_hidden or cfg.get("bert_gate_hidden", 3584)),
            num_frames=int(cfg.get("num_frames", 8)),
            use_x_start_end=bool(cfg.get("mm_use_x_start_end", True)),
        )

    @property
    def audio_depth(self) -> int:
        return int(self.audio_projector_type[3:-len("x_gelu")])


class R1OmniModel(nn.Module):
    """Projectors + gate + LLM; every forward step works from tower outputs."""

    def __init__(self, cfg: R1OmniConfig, qwen_config: Any, bert_config: Any) -> None:
        super().__init__()
        from transformers import BertModel, Qwen2ForCausalLM

        self.cfg = cfg
        self.lm = Qwen2ForCausalLM(qwen_config)
        inner = self.lm.model
        inner.mm_projector = AllInOneSmall(cfg.vision_dim, cfg.hidden_size, cfg.projector_depth)
        inner.audio_projector = mlp(cfg.audio_dim, cfg.hidden_size, cfg.audio_depth)
        inner.bert_model = BertModel(bert_config)
        inner.bert_gate = bert_gate(bert_config.hidden_size, cfg.gate_hidden)

    @property
    def inner(self) -> nn.Module:
        return self.lm.model

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm.model.embed_tokens.weight.device

    @torch.no_grad()
    def gate_weights(self, bert_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Softmax branch weights ``[B, 3]`` from BERT's CLS of the instruction(s)."""
        out = self.inner.bert_model(**{k: v.to(self.device) for k, v in bert_inputs.items()})
        logits = self.inner.bert_gate(out.last_hidden_state[:, 0, :])
        return torch.softmax(logits.float(), dim=-1)

    @torch.no_grad()
    def project_video(self, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``[B, T, N, C]`` SigLIP tokens -> ``[B, T*ceil(sqrt N/2)^2, hidden]``."""
        tokens = tokens.to(device=self.device, dtype=self.dtype)
        if weights.shape[0] == 1 and tokens.shape[0] > 1:
            weights = weights.expand(tokens.shape[0], -1)
        return self.inner.mm_projector(tokens, weights.to(self.device))

    @torch.no_grad()
    def project_audio(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, 500, C]`` pooled Whisper frames -> ``[B, 500, hidden]``."""
        return self.inner.audio_projector(frames.to(device=self.device, dtype=self.dtype))

    @torch.no_grad()
    def embed_prompt(self, ids: list[int], video: torch.Tensor | None, audio: torch.Tensor | None) -> torch.Tensor:
        """Input embeddings ``[B, L, hidden]``: text ids with slots replaced by features.

        Every row shares ``ids`` (one instruction); ``video``/``audio`` hold the
        projected features of each clip for the ``VIDEO_SLOT``/``AUDIO_SLOT``.
        """
        feats = {VIDEO_SLOT: video, AUDIO_SLOT: audio}
        batch = next((f.shape[0] for f in feats.values() if f is not None), 1)
        embed = self.inner.embed_tokens
        pieces: list[torch.Tensor] = []
        run: list[int] = []

        def flush() -> None:
            if run:
                t = embed(torch.tensor(run, device=self.device))
                pieces.append(t.unsqueeze(0).expand(batch, -1, -1))
                run.clear()

        for tok in ids:
            if tok in feats:
                flush()
                f = feats[tok]
                if f is None:
                    raise ValueError(f"prompt has a {'video' if tok == VIDEO_SLOT else 'audio'} slot but no features")
                pieces.append(f.to(self.dtype))
            else:
                run.append(tok)
        flush()
        return torch.cat(pieces, dim=1)

    @torch.no_grad()
    def greedy(self, embeds: torch.Tensor, max_new_tokens: int, stop_ids: set[int], pad_id: int,
               repetition_penalty: float = 1.0) -> list[list[int]]:
        """Greedy decoding with a KV cache; one token list per row, stop token excluded.

        All rows share the prompt length (no padding, no attention mask). Rows
        that have stopped keep being fed ``pad_id`` until every row stops.
        ``repetition_penalty`` (from the checkpoint's generation_config.json) divides the positive
        logits and multiplies the negative ones of every token generated so far, as HF generate
        does when the prompt is given as embeddings (so it covers the generated tokens only).
        """
        from transformers import DynamicCache

        batch = embeds.shape[0]
        cache = DynamicCache(config=self.lm.config)
        out = self.lm(inputs_embeds=embeds, cache=cache, use_cache=True, logits_to_keep=1)
        done = torch.zeros(batch, dtype=torch.bool, device=embeds.device)
        stops = torch.tensor(sorted(stop_ids), device=embeds.device)
        tokens: list[torch.Tensor] = []
        seen = None
        for _ in range(max_new_tokens):
            logits = out.logits[:, -1, :]
            if repetition_penalty != 1.0 and seen is not None:
                hit = torch.where(logits < 0, logits * repetition_penalty, logits / repetition_penalty)
                logits = torch.where(seen, hit, logits)
            nxt = logits.argmax(dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            tokens.append(nxt)
            if repetition_penalty != 1.0:
                seen = torch.zeros_like(logits, dtype=torch.bool) if seen is None else seen
                seen[torch.arange(batch, device=nxt.device), nxt] = True
            done = done | torch.isin(nxt, stops)
            if bool(done.all()):
                break
            out = self.lm(input_ids=nxt[:, None], cache=out.cache, use_cache=True,
                          logits_to_keep=1)
        result: list[list[int]] = []
        seq = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(batch)]
        for row in seq:
            cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
            result.append(row[:cut])
        return result
