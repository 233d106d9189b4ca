"""Shared fixtures for the extraction tests: tiny models and tiny media, built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from clmer_features import testing as T


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """A models dir holding tiny random SigLIP and BERT under their hub ids."""
    root = tmp_path_factory.mktemp("models")
    T.make_tiny_siglip(root)
    T.make_tiny_bert(root)
    return root


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    return T.make_media_set(tmp_path_factory.mktemp("media"))


def media_rows(media: dict[str, Path]) -> list[dict]:
    """One manifest row per kind of input, good and bad."""
    def v(k: str, **kw) -> dict:
        return {"clip_id": k, "video": str(media[k]), **kw}

    def a(k: str, **kw) -> dict:
        return {"clip_id": k, "audio": str(media[k]), **kw}

    return [
        v("av", text="hello happy day", language="en"),
        v("av2", text="oh no this is terrible", language="en"),
        v("noaudio", text="what a great day"),
        a("wav", text="i am so sad today"),
        a("wav8k"),
        v("odd"),
        v("unicode"),
        v("truncated"),
        v("empty"),
        v("av", clip_id="late", start=9.0, end=12.0),
        v("av", clip_id="short", start=1.0, end=1.3),
    ]
