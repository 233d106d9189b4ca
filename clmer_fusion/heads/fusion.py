"""Utterance-level fusion heads: linear, MLP (early fusion), late fusion, attention fusion."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clmer_fusion.heads.base import Head, LossFn, mlp


class LinearHead(Head):
    """One linear layer on the concatenated modalities (multinomial logistic regression)."""

    name = "linear"

    def __init__(self, dims: list[int], n_out: int, **kw: Any):
        super().__init__(dims, n_out, **kw)
        self.fc = nn.Linear(sum(dims), n_out)

    def forward(self, xs, masks, present):
        return {"out": self.fc(torch.cat(self.inputs(xs, masks, present), dim=1))}


class MLPHead(Head):
    """Early fusion: an MLP (one hidden layer, ReLU, dropout) on the concatenation."""

    name = "mlp"

    def __init__(self, dims: list[int], n_out: int, **kw: Any):
        super().__init__(dims, n_out, **kw)
        self.net = mlp(sum(dims), self.hidden, n_out, self.dropout_p)

    def forward(self, xs, masks, present):
        return {"out": self.net(torch.cat(self.inputs(xs, masks, present), dim=1))}


class LateHead(Head):
    """Late fusion: one linear classifier per modality; outputs averaged over present modalities.

    Each per-modality classifier also gets its own loss (weight ``aux_weight``), so each stays a
    usable unimodal model.
    """

    name = "late"

    def __init__(self, dims: list[int], n_out: int, aux_weight: float = 0.5, **kw: Any):
        super().__init__(dims, n_out, **kw)
        self.aux_weight = aux_weight
        self.fcs = nn.ModuleList([nn.Linear(d, n_out) for d in dims])

    def forward(self, xs, masks, present):
        parts = torch.stack([fc(x) for fc, x in zip(self.fcs, self.inputs(xs, masks, present))], 1)
        w = present.to(parts.dtype).unsqueeze(-1)
        w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
        return {"out": (parts * w).sum(1) / w.sum(1), "parts": parts}

    def aux_loss(self, out, y, loss_fn: LossFn, present):
        parts = out["parts"]
        return self.aux_weight * sum(loss_fn(parts[:, i], y) for i in range(parts.shape[1])) / parts.shape[1]


class AttentionHead(Head):
    """Attention fusion: per-modality projection, learned per-clip modality weights (softmax over
    present modalities), weighted sum, classifier. ``out["weights"]`` [N, M] are the weights."""

    name = "attention"

    def __init__(self, dims: list[int], n_out: int, **kw: Any):
        super().__init__(dims, n_out, **kw)
        self.proj = nn.ModuleList([nn.Linear(d, self.hidden) for d in dims])
        self.score = nn.Sequential(nn.Linear(self.hidden, self.hidden // 2 or 1), nn.Tanh(),
                                   nn.Linear(self.hidden // 2 or 1, 1, bias=False))
        self.drop = nn.Dropout(self.dropout_p)
        self.fc = nn.Linear(self.hidden, n_out)

    def forward(self, xs, masks, present):
        h = torch.stack([torch.relu(p(x)) for p, x in zip(self.proj, self.inputs(xs, masks, present))], 1)
        s = self.score(h).squeeze(-1)
        any_present = present.any(1, keepdim=True)
        s = s.masked_fill(~present & any_present, float("-inf"))
        w = torch.softmax(s, dim=1)
        return {"out": self.fc(self.drop((w.unsqueeze(-1) * h).sum(1))), "weights": w}
