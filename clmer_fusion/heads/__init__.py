"""Fusion heads, registered by name: linear, mlp, late, attention, temporal, unified, disentangled."""
from __future__ import annotations

from typing import Any

from clmer_fusion.heads.base import Head
from clmer_fusion.heads.disentangled import DisentangledHead
from clmer_fusion.heads.fusion import AttentionHead, LateHead, LinearHead, MLPHead
from clmer_fusion.heads.temporal import TemporalHead
from clmer_fusion.heads.unified import UnifiedHead

HEADS: dict[str, type[Head]] = {
    h.name: h for h in (LinearHead, MLPHead, LateHead, AttentionHead, TemporalHead, UnifiedHead, DisentangledHead)
}


def available() -> list[str]:
    return list(HEADS)


def build_head(name: str, dims: list[int], n_out: int, **params: Any) -> Head:
    """Instantiate a head by name; unknown names raise with the list of known ones."""
    from clmer_features.errors import ClmerError

    if name not in HEADS:
        raise ClmerError(f"unknown head {name!r}; choose from {', '.join(HEADS)}")
    return HEADS[name](dims, n_out, **params)


__all__ = ["HEADS", "Head", "available", "build_head"]
