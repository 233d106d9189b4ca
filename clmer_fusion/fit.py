"""Fit one head on a ``FusionData`` split: full-batch fast path, early stopping, determinism.

Fast path: the training split is held as tensors on the device; large batches (1024 rows by
default, ``batch_size=0`` for one full batch) are index slices from a seeded ``torch.Generator``
permutation (no DataLoader, no per-sample collation); validation is one forward pass per epoch;
early stopping on validation loss (or a validation metric, loss breaking ties).
Same config + seed + data -> same numbers (seeded init, dropout and shuffles; no nondeterministic ops).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clmer_features.device import resolve_device
from clmer_fusion.data import FusionData
from clmer_fusion.heads import Head, build_head


@dataclass
class TrainConfig:
    """Everything that changes the numbers of one fit (the run record stores it)."""

    head: str = "mlp"
    hidden: int = 128
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 1024           # large batches (0: full batch): the CPU fast path
    max_epochs: int = 300
    patience: int = 10               # evaluations without val improvement before stopping
    eval_every: int = 1
    min_delta: float = 1e-3          # relative val-loss improvement that resets patience
    select: str = "loss"             # early-stopping criterion: loss, or (classification) war|uar|macro_f1|weighted_f1
    class_weights: bool = False
    standardize: bool = True
    modality_dropout: float = 0.0    # train-time probability of hiding a modality (learns the embedding)
    pool: str = "mean"               # frame inputs: "mean" or "attention" pooling inside the head
    reg_loss: str = "l1"             # regression: "l1" (MMSA habit) or "mse"
    seed: int = 0
    device: str = "auto"
    head_params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            from clmer_features.errors import ClmerError
            raise ClmerError(f"unknown training option(s) {sorted(unknown)}")
        return cls(**d)


@dataclass
class Fitted:
    """A trained head plus what predicting needs (standardisation, classes) and how training went."""

    head: Head
    config: TrainConfig
    modalities: list[str]
    classes: list[str]
    task: str
    stats: list[tuple[np.ndarray, np.ndarray]]
    best_epoch: int
    epochs: int
    seconds: float
    history: list[dict[str, float]]

    def tensors(self, data: FusionData, device: torch.device):
        return _tensors(data, self.modalities, self.stats, device)

    @torch.no_grad()
    def predict(self, data: FusionData, present: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities [N, K] or values [N]; ``present`` overrides which modalities are seen."""
        dev = next(self.head.parameters()).device
        xs, masks, pres, _ = self.tensors(data, dev)
        if present is not None:
            pres = torch.as_tensor(present, dtype=torch.bool, device=dev)
        self.head.eval()
        out = self.head(xs, masks, pres)["out"]
        if self.task == "classification":
            return torch.softmax(out, 1).cpu().numpy()
        return out[:, 0].cpu().numpy()


def _stats(data: FusionData, standardize: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    stats = []
    for i, m in enumerate(data.modalities):
        x = data.x[m]
        rows = x[data.present[:, i]]
        if data.mask is not None:
            rows = rows[data.mask[m][data.present[:, i]]]
        if not standardize or len(rows) == 0:
            stats.append((np.zeros(x.shape[-1], np.float32), np.ones(x.shape[-1], np.float32)))
            continue
        rows = rows.astype(np.float64)
        stats.append((rows.mean(0).astype(np.float32), (rows.std(0) + 1e-6).astype(np.float32)))
    return stats


def _tensors(data: FusionData, modalities: list[str], stats, device: torch.device):
    xs = [torch.from_numpy(((data.x[m] - mu) / sd).astype(np.float32)).to(device)
          for m, (mu, sd) in zip(modalities, stats)]
    if data.mask is not None:
        masks = [torch.from_numpy(data.mask[m]).to(device) for m in modalities]
        xs = [x * mk.unsqueeze(-1) for x, mk in zip(xs, masks)]
    else:
        masks = None
    present = torch.from_numpy(np.ascontiguousarray(data.present)).to(device)
    y = torch.from_numpy(data.y).to(device)
    return xs, masks, present, y


def _loss_fn(cfg: TrainConfig, task: str, weight: torch.Tensor | None):
    if task == "classification":
        return lambda out, y: F.cross_entropy(out, y, weight=weight)
    if cfg.reg_loss == "mse":
        return lambda out, y: F.mse_loss(out.reshape(-1), y)
    return lambda out, y: F.l1_loss(out.reshape(-1), y)


def _val_metric(select: str, train: FusionData, vout: torch.Tensor, val: FusionData) -> float:
    """Validation score that early stopping maximises (0 when selecting on loss alone)."""
    if select == "loss" or train.task != "classification":
        return 0.0
    from clmer_fusion.metrics import classification_metrics

    pred = vout.argmax(1).cpu().numpy()
    return round(classification_metrics(val.y, pred, train.n_out)[select], 10)


def fit(train: FusionData, val: FusionData | None, cfg: TrainConfig) -> Fitted:
    """Train ``cfg.head`` on ``train``; early-stop on ``val`` loss (restore the best epoch)."""
    t0 = time.perf_counter()
    if cfg.select not in ("loss", "war", "uar", "macro_f1", "weighted_f1"):
        from clmer_features.errors import ClmerError
        raise ClmerError(f"select must be loss, war, uar, macro_f1 or weighted_f1, not {cfg.select!r}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    stats = _stats(train, cfg.standardize)
    head = build_head(cfg.head, train.dims, train.n_out, hidden=cfg.hidden, dropout=cfg.dropout,
                      pool=cfg.pool, frame=train.mask is not None, **cfg.head_params).to(device)
    xs, masks, present, y = _tensors(train, train.modalities, stats, device)
    weight = None
    if cfg.class_weights and train.task == "classification":
        counts = np.bincount(train.y, minlength=train.n_out).astype(np.float64)
        weight = torch.tensor(np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0),
                              dtype=torch.float32, device=device)
    loss_fn = _loss_fn(cfg, train.task, weight)
    vt = _tensors(val, train.modalities, stats, device) if val is not None and val.n else None
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = train.n
    bs = cfg.batch_size if 0 < cfg.batch_size < n else n
    best, best_state, best_epoch, bad, history = float("inf"), None, 0, 0, []
    best_metric = float("-inf")
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        head.train()
        order = torch.randperm(n, generator=gen) if bs < n else None
        for start in range(0, n, bs):
            idx = order[start:start + bs].to(device) if order is not None else None
            bx = [x[idx] for x in xs] if idx is not None else xs
            bm = [m[idx] for m in masks] if masks is not None and idx is not None else masks
            bp = present[idx] if idx is not None else present
            by = y[idx] if idx is not None else y
            if cfg.modality_dropout > 0:
                keep = torch.rand(bp.shape, generator=gen) >= cfg.modality_dropout
                bp = bp & keep.to(device)
            out = head(bx, bm, bp)
            loss = loss_fn(out["out"], by) + head.aux_loss(out, by, loss_fn, bp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if vt is None or epoch % cfg.eval_every:
            continue
        head.eval()
        with torch.no_grad():
            vout = head(vt[0], vt[1], vt[2])["out"]
            vloss = float(loss_fn(vout, vt[3]))
        vmetric = _val_metric(cfg.select, train, vout, val)
        history.append({"epoch": epoch, "train_loss": float(loss.detach()), "val_loss": vloss, "val_metric": vmetric})
        better_loss = vloss < best - cfg.min_delta * max(abs(best), 1e-3)
        if best_state is None or vmetric > best_metric or (vmetric == best_metric and better_loss):
            best, best_metric, best_epoch, bad = vloss, vmetric, epoch, 0
            best_state = copy.deepcopy(head.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    else:
        best_epoch = epoch
    return Fitted(head=head, config=cfg, modalities=list(train.modalities), classes=list(train.classes),
                  task=train.task, stats=stats, best_epoch=best_epoch, epochs=epoch,
                  seconds=time.perf_counter() - t0, history=history)
