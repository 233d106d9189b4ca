"""Errors a user can act on. The CLIs print them as one line, no traceback."""
from __future__ import annotations


class ClmerError(Exception):
    """Base for errors that are the user's to fix (bad input, wrong spec, missing model)."""


class ManifestError(ClmerError):
    """A manifest has problems; ``problems`` lists each one (file, row, column, what)."""

    def __init__(self, path: str, problems: list[str], total: int | None = None):
        self.path = path
        self.problems = problems
        self.total = total if total is not None else len(problems)
        shown = "\n".join(f"  {p}" for p in problems)
        more = f"\n  ... and {self.total - len(problems)} more" if self.total > len(problems) else ""
        super().__init__(f"{path}: {self.total} problem(s) in manifest\n{shown}{more}")


class StoreError(ClmerError):
    """The store is missing, incomplete, or not what the caller asked for."""


class SpecMismatchError(StoreError):
    """The caller asked for a feature spec other than the one(s) stored."""


class ModelNotFoundError(ClmerError):
    """A model folder is missing or incomplete (nothing is ever downloaded)."""


class ParameterError(ClmerError):
    """An extractor parameter is unknown or has a value its feature does not allow."""
