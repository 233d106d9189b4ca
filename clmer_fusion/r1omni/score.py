"""Score R1-Omni answers against labels.

Two views, both shipped with their word tables as data files:

- **exact**: gold label and answer are lower-cased, stripped of punctuation
  and mapped through ``data/synonyms.json`` (fearful -> fear, surprised ->
  surprise, joy -> happy, ...); a clip is right when the two names are equal.
  WAR is accuracy over clips, UAR the mean recall over gold classes. A clip
  without an answer counts as wrong.
- **open vocabulary** (OV-MER style): labels and answers are sets of words
  (split on commas, semicolons, slashes, "and", "or"); each word is replaced
  by its group in ``data/ovmer_groups.json`` (a word in no group is its own
  group); per clip precision = |pred ∩ gold| / |pred| and recall =
  |pred ∩ gold| / |gold| over groups, averaged over clips; F1 from the two
  averages.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Sequence

_PUNCT = re.compile(r"^[\s\"'`.,;:!?()\[\]{}<>*_-]+|[\s\"'`.,;:!?()\[\]{}<>*_-]+$")
_SPLIT = re.compile(r"\s*(?:[,;/|，、；]|\band\b|\bor\b|&)\s*")


@lru_cache(maxsize=None)
def synonyms() -> dict[str, str]:
    data = json.loads(resources.files("clmer_fusion.r1omni").joinpath("data/synonyms.json").read_text("utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


@lru_cache(maxsize=None)
def ov_groups() -> dict[str, str]:
    """word -> group name (the group's first word)."""
    data = json.loads(resources.files("clmer_fusion.r1omni").joinpath("data/ovmer_groups.json").read_text("utf-8"))
    out: dict[str, str] = {}
    for group in data["groups"]:
        for word in group:
            out[word] = group[0]
    return out


def clean(text: str | None) -> str:
    """Lower-case, single spaces, no surrounding punctuation."""
    if text is None:
        return ""
    return _PUNCT.sub("", " ".join(str(text).lower().split()))


def split_labels(text: str | None) -> list[str]:
    """The words of an open-vocabulary label or answer, cleaned, in order, no repeats."""
    out: list[str] = []
    for part in _SPLIT.split(clean(text)):
        w = clean(part)
        if w and w not in out:
            out.append(w)
    return out


def normalize_label(text: str | None) -> str:
    """The canonical class name of a label or answer ('' when there is none).

    An answer listing several words is judged by its first one.
    """
    syn = synonyms()
    c = clean(text)
    if c in syn:
        return syn[c]
    words = split_labels(c)
    if not words:
        return ""
    return syn.get(words[0], words[0])


def exact_scores(golds: Sequence[str | None], answers: Sequence[str | None]) -> dict[str, object]:
    """WAR, UAR and per-class recall over clips that have a gold label."""
    pairs = [(normalize_label(g), normalize_label(a)) for g, a in zip(golds, answers) if clean(g)]
    n = len(pairs)
    if n == 0:
        return {"n": 0, "war": None, "uar": None, "per_class_recall": {}}
    correct = sum(g == p for g, p in pairs)
    per_class: dict[str, float] = {}
    for cls in sorted({g for g, _ in pairs}):
        rows = [p for g, p in pairs if g == cls]
        per_class[cls] = sum(p == cls for p in rows) / len(rows)
    return {
        "n": n,
        "correct": correct,
        "war": correct / n,
        "uar": sum(per_class.values()) / len(per_class),
        "per_class_recall": per_class,
    }


def _grouped(words: list[str]) -> set[str]:
    groups = ov_groups()
    syn = synonyms()
    out = set()
    for w in words:
        out.add(groups.get(w) or groups.get(syn.get(w, w)) or syn.get(w, w))
    return out


def ov_scores(golds: Sequence[str | None], answers: Sequence[str | None]) -> dict[str, object]:
    """OV-MER style set-level precision, recall and F1 (averaged over clips with a gold set)."""
    ps: list[float] = []
    rs: list[float] = []
    for g, a in zip(golds, answers):
        gold = _grouped(split_labels(g))
        if not gold:
            continue
        pred = _grouped(split_labels(a))
        hit = len(gold & pred)
        ps.append(hit / len(pred) if pred else 0.0)
        rs.append(hit / len(gold))
    if not ps:
        return {"n": 0, "precision": None, "recall": None, "f1": None}
    p, r = sum(ps) / len(ps), sum(rs) / len(rs)
    return {"n": len(ps), "precision": p, "recall": r, "f1": (2 * p * r / (p + r)) if p + r else 0.0}


def score(golds: Sequence[str | None], answers: Sequence[str | None]) -> dict[str, object]:
    """Both views: ``{"exact": {...}, "open_vocabulary": {...}}``."""
    return {"exact": exact_scores(golds, answers), "open_vocabulary": ov_scores(golds, answers)}
