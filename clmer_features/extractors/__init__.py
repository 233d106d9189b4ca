"""Feature extractors, one module each, registered by name.

``available()`` lists them; ``get_extractor(name)`` returns a class. The
built-in modules are imported lazily (each imports its heavy libraries only in
``load()``), so listing extractors stays cheap.
"""
from __future__ import annotations

import importlib
import warnings

from clmer_features.extractors.base import (
    ClipOutput,
    DecodedClip,
    Extractor,
    FrameRequest,
    available,
    get_extractor,
    register,
)

# Modules holding the built-in extractors (a missing one is skipped, so each
# can land on its own).
BUILTIN_MODULES = ("siglip", "bert", "emotion2vec", "asr", "r1omni")

_loaded = False
import_problems: dict[str, str] = {}


def load_builtin() -> None:
    """Import the built-in extractor modules once (they register themselves)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        full = f"{__name__}.{mod}"
        try:
            importlib.import_module(full)
        except ModuleNotFoundError as exc:
            if exc.name != full:
                import_problems[mod] = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"extractor module {full} not usable: {exc}", stacklevel=2)
        except Exception as exc:  # noqa: BLE001 - one broken module must not hide the others
            import_problems[mod] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"extractor module {full} not usable: {exc}", stacklevel=2)


__all__ = [
    "ClipOutput",
    "DecodedClip",
    "Extractor",
    "FrameRequest",
    "available",
    "get_extractor",
    "load_builtin",
    "register",
]
