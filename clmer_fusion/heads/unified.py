"""Unified-space head (after the Cross-Modal Emotion Recognition seed method).

Each modality is encoded into one shared space. The training loss adds, to the task loss on the
fused vector (mean of present modalities' codes):
- contrastive alignment: symmetric InfoNCE between the codes of every pair of modalities of the
  same clip (on at most ``contrast_rows`` rows per step, so a full batch stays cheap);
- multitask: the same classifier applied to each modality's code alone;
- autoencoder reconstruction: each modality's input decoded back from the fused code.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clmer_fusion.heads.base import Head, LossFn, Tensor


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE: row i of ``a`` should match row i of ``b`` among all rows."""
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class UnifiedHead(Head):
    name = "unified"

    def __init__(self, dims: list[int], n_out: int, w_contrast: float = 0.1, w_multitask: float = 0.5,
                 w_recon: float = 0.1, temperature: float = 0.1, contrast_rows: int = 512, **kw: Any):
        super().__init__(dims, n_out, **kw)
        self.w = {"contrast": w_contrast, "multitask": w_multitask, "recon": w_recon}
        self.temperature, self.contrast_rows = temperature, contrast_rows
        self.enc = nn.ModuleList([nn.Sequential(nn.Linear(d, self.hidden), nn.ReLU(),
                                                nn.Linear(self.hidden, self.hidden)) for d in dims])
        self.dec = nn.ModuleList([nn.Linear(self.hidden, d) for d in dims])
        self.drop = nn.Dropout(self.dropout_p)
        self.fc = nn.Linear(self.hidden, n_out)

    def forward(self, xs, masks, present):
        inp = self.inputs(xs, masks, present)
        z = torch.stack([e(x) for e, x in zip(self.enc, inp)], 1)            # [N, M, H]
        w = present.to(z.dtype).unsqueeze(-1)
        w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
        fused = (z * w).sum(1) / w.sum(1)
        return {"out": self.fc(self.drop(fused)), "z": z, "fused": fused, "inputs": torch.cat(inp, 1)}

    def aux_loss(self, out, y, loss_fn: LossFn, present):
        z, fused = out["z"], out["fused"]
        m = z.shape[1]
        total = fused.new_zeros(())
        if self.w["multitask"]:
            total = total + self.w["multitask"] * sum(loss_fn(self.fc(z[:, i]), y) for i in range(m)) / m
        if self.w["recon"]:
            rec = torch.cat([d(fused) for d in self.dec], 1)
            total = total + self.w["recon"] * F.mse_loss(rec, out["inputs"])
        if self.w["contrast"] and m > 1:
            rows = min(self.contrast_rows, z.shape[0])
            pairs = 0
            loss = fused.new_zeros(())
            for i in range(m):
                for j in range(i + 1, m):
                    both = (present[:rows, i] & present[:rows, j])
                    if both.sum() > 1:
                        loss = loss + info_nce(z[:rows][both, i], z[:rows][both, j], self.temperature)
                        pairs += 1
            if pairs:
                total = total + self.w["contrast"] * loss / pairs
        return total
