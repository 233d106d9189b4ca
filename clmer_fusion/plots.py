"""PNG plots (matplotlib, Agg backend): modality contributions and confusion matrices."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def shapley_bars(groups: dict[str, dict[str, float]], modalities: Sequence[str], path: str | Path,
                 title: str = "Modality contribution (Shapley)") -> Path:
    """Grouped bars: one group per key of ``groups`` (e.g. a head, a class), one bar per modality."""
    plt = _plt()
    names = list(groups)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) * len(modalities) / 2 + 2), 3.5))
    width = 0.8 / max(len(modalities), 1)
    x = np.arange(len(names))
    for i, m in enumerate(modalities):
        ax.bar(x + (i - (len(modalities) - 1) / 2) * width, [groups[g].get(m, 0.0) for g in names], width, label=m)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("Shapley value")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_png(cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts."""
    plt = _plt()
    cm = np.asarray(cm, np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(classes), 0.8 + 0.6 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
