"""Feature extractors, one module each, registered by name.

``available()`` lists them; ``get_extractor(name)`` returns a class. Every
module of this package is imported on first use (each imports its heavy
libraries only in ``load()``, so listing stays cheap), then every entry point
of the group ``clmer.extractors`` (third-party extractors: a module, or an
object whose import registers them). A module that fails to import is
reported in :data:`import_problems` and warned about; the others still work.
"""
from __future__ import annotations

import importlib
import pkgutil
import warnings
from importlib.metadata import entry_points

from clmer_features.extractors.base import (
    ClipOutput,
    DecodedClip,
    Extractor,
    ExtractorConfig,
    FrameRequest,
    ParamInfo,
    RunInputs,
    available,
    get_extractor,
    param,
    register,
    register_preset,
)

ENTRY_POINT_GROUP = "clmer.extractors"

_loaded = False
import_problems: dict[str, str] = {}


def _note(where: str, exc: BaseException) -> None:
    import_problems[where] = f"{type(exc).__name__}: {exc}"
    warnings.warn(f"extractor module {where} not usable: {exc}", stacklevel=3)


def load_builtin() -> None:
    """Import every module of this package and every ``clmer.extractors`` entry point, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        full = f"{__name__}.{info.name}"
        try:
            importlib.import_module(full)
        except Exception as exc:  # noqa: BLE001 - one broken module must not hide the others
            _note(full, exc)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001
            _note(f"{ep.value} (entry point {ep.name})", exc)


def describe(name: str) -> dict:
    """One feature as the ``features`` command lists it: family, input, default model folder id,
    what it requires (always, and with a parameter's value), its output, and each parameter (type,
    default, whether it changes the spec, allowed values, help, and ``former_default`` where the
    default changed)."""
    cls = get_extractor(name)
    return {
        "feature": name,
        "family": cls.family or "-",
        "preset_of": cls.preset_of,
        "input": cls.input,
        "default_model": cls.default_model,
        "requires": list(cls.requires),
        "requires_when": [{"param": p, "value": v, "requires": list(r)} for p, v, r in cls.requires_when],
        "output": cls.output,
        "help": " ".join((cls.__doc__ or "").split()) if cls.preset_of else "",
        "params": [
            {"name": p.name, "type": p.type, "default": p.default, "spec": p.spec, "allowed": p.allowed(),
             "help": p.help, **({"former_default": p.former_default} if p.default_changed else {})}
            for p in cls.Config.describe()
        ],
    }


__all__ = [
    "describe",
    "ClipOutput",
    "DecodedClip",
    "ENTRY_POINT_GROUP",
    "Extractor",
    "ExtractorConfig",
    "FrameRequest",
    "ParamInfo",
    "RunInputs",
    "available",
    "get_extractor",
    "load_builtin",
    "param",
    "register",
    "register_preset",
]
