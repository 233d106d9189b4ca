"""Project-wide test settings: nothing reaches a model hub, caches go to tmp."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """A test never writes into the repository's cache/ folder by accident."""
    monkeypatch.setenv("CLMER_CACHE", str(tmp_path / "cache"))
