"""Dataset recipes: official label files -> manifests.

``build_manifest("meld", ROOT, "meld.csv")`` reads the dataset's own label
files under ROOT, writes a manifest (CSV or Parquet by extension) and a
problem report beside it (``<manifest>.report.txt``), and returns the rows and
the report. One module per dataset; each has ``NAME``, ``OPTIONS`` (extra
``key=value`` options it accepts) and ``build(root, keep_missing=..., **options)``.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from clmer_features.recipes.common import RecipeError, RecipeReport, RecipeResult, write_manifest

MODULES = ("chsims2", "mosei", "meld", "iemocap", "dfew", "mer2025")
ALIASES = {
    "ch-sims-v2": "chsims2", "chsimsv2": "chsims2", "simsv2": "chsims2", "ch-sims2": "chsims2",
    "cmu-mosei": "mosei", "cmumosei": "mosei", "mer-2025": "mer2025",
}

__all__ = ["available", "get_recipe", "layout", "build_manifest", "RecipeError", "RecipeReport", "RecipeResult"]


def available() -> list[str]:
    return list(MODULES)


def layout(recipe: ModuleType) -> list[str]:
    """The folder layout a recipe expects: the literal block after ``Layout ...::`` in its
    module docstring (one source for the docs and ``manifest from --help``)."""
    lines = (recipe.__doc__ or "").splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("Layout") and ln.rstrip().endswith("::")), None)
    if start is None:
        return []
    block: list[str] = []
    for ln in lines[start + 1:]:
        if ln.strip() and not ln.startswith(" "):
            break
        block.append(ln.rstrip())
    while block and not block[-1]:
        block.pop()
    return [ln for ln in block if ln]


def get_recipe(name: str) -> ModuleType:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in MODULES:
        raise RecipeError(f"unknown dataset {name!r}; recipes: {', '.join(MODULES)}")
    return importlib.import_module(f"clmer_features.recipes.{key}")


def build_manifest(
    dataset: str,
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    keep_missing: bool = False,
    options: dict[str, str] | None = None,
    relative: bool = False,
    strict: bool = False,
) -> RecipeResult:
    """Run a recipe and write its manifest and report.

    ``relative``: media paths relative to the manifest's folder (a portable
    manifest) instead of absolute. ``strict``: refuse to write the manifest when
    any label row was dropped. Raises RecipeError when nothing is usable.
    """
    recipe = get_recipe(dataset)
    options = dict(options or {})
    unknown = sorted(set(options) - set(recipe.OPTIONS))
    if unknown:
        accepted = ", ".join(f"{k} ({v})" for k, v in recipe.OPTIONS.items()) or "none"
        raise RecipeError(f"{recipe.NAME}: unknown option(s) {unknown}; accepted: {accepted}")
    root = Path(root)
    if not root.is_dir():
        raise RecipeError(f"{root}: dataset folder not found")
    result = recipe.build(root, keep_missing=keep_missing, **options)
    out = Path(out)
    report_path = out.with_name(out.name + ".report.txt")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(result.report.full_text(), encoding="utf-8")
    if not result.rows:
        raise RecipeError(f"{recipe.NAME}: no usable rows under {root}\n{result.report.summary()}")
    if strict and result.report.dropped:
        raise RecipeError(f"{recipe.NAME}: --strict and {result.report.dropped} row(s) dropped; "
                          f"manifest not written (report: {report_path})\n{result.report.summary()}")
    if relative:
        base = out.resolve().parent
        for row in result.rows:
            for col in ("video", "audio"):
                if row.get(col):
                    row[col] = os.path.relpath(row[col], base)
    write_manifest(result.rows, out)
    return result
