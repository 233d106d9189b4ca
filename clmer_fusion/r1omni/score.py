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
from pathlib import Path
from typing import Any, Sequence

from clmer_features.errors import ClmerError

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


def load_groups(path: str | Path) -> dict[str, str]:
    """A synonym map from a JSON file: ``{"groups": [[word, ...], ...]}`` (the layout of the shipped
    ``data/ovmer_groups.json``; a group is named by its first word) or ``{"word": "group", ...}``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ClmerError(f"{p}: not a readable JSON synonym map ({exc})") from None
    out: dict[str, str] = {}
    if isinstance(data, dict) and isinstance(data.get("groups"), list):
        for i, group in enumerate(data["groups"]):
            if not isinstance(group, list) or not group or not all(isinstance(w, str) for w in group):
                raise ClmerError(f"{p}: groups[{i}] must be a non-empty list of words")
            for word in group:
                out[clean(word)] = clean(group[0])
        return out
    if isinstance(data, dict) and all(isinstance(v, str) for k, v in data.items() if not k.startswith("_")):
        return {clean(k): clean(v) for k, v in data.items() if not k.startswith("_")}
    raise ClmerError(f'{p}: expected {{"groups": [[word, ...], ...]}} or {{"word": "group", ...}}')


@lru_cache(maxsize=None)
def builtin_groups() -> dict[str, str]:
    """The shipped map: OV-MER word groups, then the exact-match synonyms for words in no group."""
    groups, syn = ov_groups(), synonyms()
    out = {w: syn[w] for w in syn}
    out = {w: groups.get(c, c) for w, c in out.items()}
    out.update(groups)
    return out


def _grouped(words: list[str], groups: dict[str, str] | None = None) -> set[str]:
    mapping = builtin_groups() if groups is None else groups
    return {mapping.get(w, w) for w in words}


def ov_clip(gold: str | None, answer: str | None, groups: dict[str, str] | None = None) -> dict[str, Any] | None:
    """One clip's set-level scores (None when it has no gold set): the grouped sets and P, R, F1."""
    g = _grouped(split_labels(gold), groups)
    if not g:
        return None
    a = _grouped(split_labels(answer), groups)
    hit = len(g & a)
    p, r = (hit / len(a) if a else 0.0), hit / len(g)
    return {"gold_groups": sorted(g), "predicted_groups": sorted(a), "precision": p, "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0}


def ov_scores(golds: Sequence[str | None], answers: Sequence[str | None],
              groups: dict[str, str] | None = None) -> dict[str, object]:
    """OV-MER style set-level precision, recall and F1 (averaged over clips with a gold set; F1 from the
    two averages). ``groups`` replaces the shipped synonym map (``load_groups``)."""
    per = [c for c in (ov_clip(g, a, groups) for g, a in zip(golds, answers)) if c is not None]
    if not per:
        return {"n": 0, "precision": None, "recall": None, "f1": None}
    p = sum(c["precision"] for c in per) / len(per)
    r = sum(c["recall"] for c in per) / len(per)
    return {"n": len(per), "precision": p, "recall": r, "f1": (2 * p * r / (p + r)) if p + r else 0.0}


def score(golds: Sequence[str | None], answers: Sequence[str | None]) -> dict[str, object]:
    """Both views: ``{"exact": {...}, "open_vocabulary": {...}}``."""
    return {"exact": exact_scores(golds, answers), "open_vocabulary": ov_scores(golds, answers)}
