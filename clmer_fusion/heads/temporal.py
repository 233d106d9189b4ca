"""Temporal head: a GRU per modality over its (masked) frame sequence, final states concatenated."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from clmer_fusion.heads.base import Head


class TemporalHead(Head):
    """GRU over frames (padding ignored via packed sequences); utterance inputs are 1-frame
    sequences. Absent modalities use the learned missing embedding in place of the final state."""

    name = "temporal"
    temporal = True

    def __init__(self, dims: list[int], n_out: int, **kw: Any):
        super().__init__(dims, n_out, **kw)
        self.grus = nn.ModuleList([nn.GRU(d, self.hidden, batch_first=True) for d in dims])
        self.missing_state = nn.ParameterList([nn.Parameter(torch.zeros(self.hidden)) for _ in dims])
        self.drop = nn.Dropout(self.dropout_p)
        self.fc = nn.Linear(self.hidden * len(dims), n_out)

    def forward(self, xs, masks, present):
        states = []
        for i, (gru, x) in enumerate(zip(self.grus, xs)):
            if x.dim() == 2:
                x, mask = x.unsqueeze(1), torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
            else:
                mask = masks[i] if masks is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            lengths = mask.sum(1).clamp(min=1).cpu()
            _, h = gru(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            h = h[-1]
            ok = present[:, i:i + 1] & mask.any(1, keepdim=True)
            states.append(torch.where(ok, h, self.missing_state[i].expand_as(h)))
        return {"out": self.fc(self.drop(torch.cat(states, 1)))}
