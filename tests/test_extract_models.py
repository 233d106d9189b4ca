"""Model folders: --model beats --models-dir beats $CLMER_MODELS_DIR; digests follow the bytes."""
from __future__ import annotations

import pytest

from clmer_features.errors import ModelNotFoundError
from clmer_features.models import parse_overrides, resolve_model_dir, weights_digest


def make(folder, payload=b"abc"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(payload)
    return folder


def test_resolution_order(tmp_path, monkeypatch):
    hub = "google/siglip-base-patch16-224"
    env_root, cli_root = tmp_path / "env", tmp_path / "cli"
    make(env_root / hub)
    make(cli_root / hub)
    one = make(tmp_path / "one")
    monkeypatch.setenv("CLMER_MODELS_DIR", str(env_root))
    assert resolve_model_dir("siglip") == (env_root / hub).resolve()
    assert resolve_model_dir("siglip", cli_root) == (cli_root / hub).resolve()
    assert resolve_model_dir("siglip", cli_root, {"siglip": one}) == one.resolve()
    monkeypatch.delenv("CLMER_MODELS_DIR")
    with pytest.raises(ModelNotFoundError, match=r"tried --models-dir: .*nothing is downloaded"):
        resolve_model_dir("siglip", tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        resolve_model_dir("siglip", None, {"siglip": tmp_path / "nope"})


def test_overrides_parse_and_refuse():
    from pathlib import Path

    assert parse_overrides(["asr=/m/whisper", " bert = /m/bert "]) == {"asr": Path("/m/whisper"),
                                                                       "bert": Path("/m/bert")}
    with pytest.raises(ModelNotFoundError, match="FEATURE=PATH"):
        parse_overrides(["asr"])


def test_digest_follows_weight_bytes_not_the_path(tmp_path):
    a = make(tmp_path / "a", b"weights")
    b = make(tmp_path / "elsewhere" / "b", b"weights")
    c = make(tmp_path / "c", b"weightz")
    assert weights_digest(a) == weights_digest(b) != weights_digest(c)
    (a / "README.md").write_text("docs do not count")
    assert weights_digest(a) == weights_digest(b)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="no weight files"):
        weights_digest(bare)
