"""Disentangled head (after the CiMEU seed method): per modality, a shared emotion code and a
private style/culture code.

The emotion classifier reads the mean of present modalities' shared codes. Training adds:
- orthogonality: squared Frobenius norm of shared^T private (per modality, batch-normalised);
- similarity: the shared codes of different modalities of a clip are pulled together (MSE);
- reconstruction: each input decoded from its shared + private codes (so private codes carry the
  rest of the signal rather than collapsing).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clmer_fusion.heads.base import Head, LossFn


class DisentangledHead(Head):
    name = "disentangled"

    def __init__(self, dims: list[int], n_out: int, w_ortho: float = 0.1, w_sim: float = 0.1,
                 w_recon: float = 0.1, **kw: Any):
        super().__init__(dims, n_out, **kw)
        self.w = {"ortho": w_ortho, "sim": w_sim, "recon": w_recon}
        h = self.hidden
        self.shared = nn.ModuleList([nn.Sequential(nn.Linear(d, h), nn.Tanh()) for d in dims])
        self.private = nn.ModuleList([nn.Sequential(nn.Linear(d, h), nn.Tanh()) for d in dims])
        self.dec = nn.ModuleList([nn.Linear(h, d) for d in dims])
        self.drop = nn.Dropout(self.dropout_p)
        self.fc = nn.Linear(h, n_out)

    def forward(self, xs, masks, present):
        inp = self.inputs(xs, masks, present)
        s = torch.stack([f(x) for f, x in zip(self.shared, inp)], 1)         # [N, M, H]
        p = torch.stack([f(x) for f, x in zip(self.private, inp)], 1)
        w = present.to(s.dtype).unsqueeze(-1)
        w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
        emo = (s * w).sum(1) / w.sum(1)
        return {"out": self.fc(self.drop(emo)), "shared": s, "private": p, "inputs": inp}

    def aux_loss(self, out, y, loss_fn: LossFn, present):
        s, p, inp = out["shared"], out["private"], out["inputs"]
        m, n = s.shape[1], s.shape[0]
        total = s.new_zeros(())
        if self.w["ortho"]:
            ortho = sum(((s[:, i] - s[:, i].mean(0)).T @ (p[:, i] - p[:, i].mean(0)) / n).pow(2).sum()
                        for i in range(m))
            total = total + self.w["ortho"] * ortho / m
        if self.w["sim"] and m > 1:
            sim, k = s.new_zeros(()), 0
            for i in range(m):
                for j in range(i + 1, m):
                    both = (present[:, i] & present[:, j]).to(s.dtype).unsqueeze(-1)
                    sim = sim + ((s[:, i] - s[:, j]).pow(2) * both).sum() / both.sum().clamp(min=1) / s.shape[2]
                    k += 1
            total = total + self.w["sim"] * sim / k
        if self.w["recon"]:
            rec = sum(F.mse_loss(self.dec[i](s[:, i] + p[:, i]), inp[i]) for i in range(m)) / m
            total = total + self.w["recon"] * rec
        return total
