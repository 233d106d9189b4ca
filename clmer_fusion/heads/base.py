"""Head contract: modality inputs (+ frame masks + presence) -> outputs dict; optional aux loss.

Every head gets the same inputs: ``xs`` a list of tensors, one per modality, [N, D] (utterance) or
[N, T, D] (frame level, with ``masks[i]`` [N, T] bool); ``present`` [N, M] bool. Absent modalities
are replaced by a learned per-modality embedding (the "embed" missing-modality policy).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import nn

Tensor = torch.Tensor
LossFn = Callable[[Tensor, Tensor], Tensor]


class AttnPool(nn.Module):
    """Learned attention pooling over frames: softmax(w . tanh(W x)) restricted to valid frames."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        s = self.score(torch.tanh(self.proj(x))).squeeze(-1)
        s = s.masked_fill(~mask, float("-inf"))
        w = torch.softmax(s, dim=1).nan_to_num(0.0)  # a clip with no frames pools to zeros
        return (w.unsqueeze(-1) * x).sum(1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class Head(nn.Module):
    """Base: pooling of frame inputs, missing-modality embedding, default (zero) aux loss."""

    name: ClassVar[str] = ""
    temporal: ClassVar[bool] = False       # consumes frame sequences itself

    def __init__(self, dims: list[int], n_out: int, hidden: int = 128, dropout: float = 0.1,
                 pool: str = "mean", frame: bool = False, **params: Any):
        super().__init__()
        if params:
            raise ValueError(f"head {self.name!r}: unknown parameters {sorted(params)}")
        self.dims, self.n_out, self.hidden, self.dropout_p = list(dims), n_out, hidden, dropout
        self.missing = nn.ParameterList([nn.Parameter(torch.zeros(d)) for d in dims])
        self.pool = pool
        self.poolers = (nn.ModuleList([AttnPool(d) for d in dims])
                        if frame and pool == "attention" and not self.temporal else None)

    def inputs(self, xs: list[Tensor], masks: list[Tensor] | None, present: Tensor) -> list[Tensor]:
        """One [N, D] tensor per modality: frames pooled, absent modalities -> learned embedding."""
        out = []
        all_present = bool(present.all())
        for i, x in enumerate(xs):
            if x.dim() == 3:
                mask = masks[i] if masks is not None else torch.ones(x.shape[:2], dtype=torch.bool)
                x = self.poolers[i](x, mask) if self.poolers is not None else masked_mean(x, mask)
            out.append(x if all_present else torch.where(present[:, i:i + 1], x, self.missing[i].expand_as(x)))
        return out

    def forward(self, xs: list[Tensor], masks: list[Tensor] | None, present: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def aux_loss(self, out: dict[str, Tensor], y: Tensor, loss_fn: LossFn, present: Tensor) -> Tensor:
        """Extra training loss (multitask, alignment, reconstruction ...); zero by default."""
        return out["out"].new_zeros(())


def mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))
