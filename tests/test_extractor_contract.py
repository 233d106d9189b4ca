"""The extractor contract itself: configs, parameter errors, presets, discovery, the cache key."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from clmer_features.errors import ParameterError
from clmer_features.extractors import base
from clmer_features.extractors.base import Extractor, ExtractorConfig, param
from clmer_features.models import weights_digest
from clmer_features.spec import FeatureSpec


@dataclass(frozen=True)
class ToyConfig(ExtractorConfig):
    frame_interval: float = param(2.0, "seconds between frames", minimum=0.1)
    pooled: str = param("cls", "utterance vector", choices=("cls", "mean"))
    layer: int = param(-1, "hidden layer")
    language: str | None = param(None, "fixed language, else detect")
    normalize: bool = param(True, "L2-normalise rows")
    frame_batch: int = param(64, "frames per forward pass", spec=False, minimum=1)


class ToyExtractor(Extractor):
    """Not registered: the contract's pieces without a real model."""

    name = "toy"
    family = "vision-frames"
    input = "video"
    Config = ToyConfig
    default_model = "org/toy"
    format_version = 1

    def spec(self) -> FeatureSpec:
        return FeatureSpec.create(self.name, model_id=self.default_model, weights_digest=weights_digest(self.model_dir),
                                  format_version=self.format_version, params={**self.config.spec_params(), "k": 3})

    def load(self) -> None: ...

    def extract(self, clips):  # pragma: no cover - never called
        return []


def _toy_folder(root: Path) -> Path:
    d = root / "org" / "toy"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"\x01\x02weights")
    (d / "config.json").write_text(json.dumps({"_name_or_path": "org/toy-small", "architectures": ["ToyModel"],
                                               "model_type": "toy"}))
    return d


# --------------------------------------------------------------------------- config
def test_from_params_validates_and_coerces() -> None:
    c = ToyConfig.from_params("toy", {"frame_interval": 1, "layer": "3", "language": "null", "normalize": "false"})
    assert c.frame_interval == 1.0 and isinstance(c.frame_interval, float)
    assert c.layer == 3 and c.language is None and c.normalize is False
    assert ToyConfig.from_params("toy", {}) == ToyConfig()


@pytest.mark.parametrize("params, message", [
    ({"frame_intrval": 1.0}, "toy: unknown parameter 'frame_intrval' (parameters: frame_interval, pooled, layer, "
                             "language, normalize, frame_batch)"),
    ({"frame_interval": "abc"}, "toy.frame_interval: expected a number >= 0.1, got 'abc'"),
    ({"frame_interval": 0.01}, "toy.frame_interval: expected a number >= 0.1, got 0.01"),
    ({"pooled": "max"}, "toy.pooled: expected \"cls\" or \"mean\", got 'max'"),
    ({"layer": 1.5}, "toy.layer: expected an integer, got 1.5"),
    ({"layer": True}, "toy.layer: expected an integer, got True"),
    ({"frame_interval": None}, "toy.frame_interval: expected a number >= 0.1, got None"),
    ({"normalize": "yes"}, "toy.normalize: expected true or false, got 'yes'"),
    ({"language": 3}, "toy.language: expected a string or null, got 3"),
])
def test_from_params_errors_are_one_line_naming_feature_parameter_and_allowed(params, message) -> None:
    with pytest.raises(ParameterError) as err:
        ToyConfig.from_params("toy", params)
    assert str(err.value) == message


def test_spec_params_hold_only_fields_that_change_numbers() -> None:
    c = ToyConfig(frame_batch=8)
    assert c.spec_params() == {"frame_interval": 2.0, "pooled": "cls", "layer": -1, "language": None,
                               "normalize": True}
    assert c.run_params() == {"frame_batch": 8}
    assert json.loads(c.to_json()) == {**c.spec_params(), "frame_batch": 8}
    assert c.to_json() == ToyConfig.from_params("x", {"frame_batch": 8}).to_json()
    info = {i.name: i for i in ToyConfig.describe()}
    assert info["frame_batch"].spec is False and info["pooled"].choices == ("cls", "mean")
    assert info["language"].type == "str | None" and info["frame_interval"].default == 2.0


def test_config_field_types_are_checked_at_registration() -> None:
    @dataclass(frozen=True)
    class Bad(ExtractorConfig):
        sizes: list = param((1, 2), "not a plain type")

    class BadExtractor(ToyExtractor):
        name = "bad_config_toy"
        Config = Bad

    with pytest.raises(TypeError, match="sizes"):
        base.register(BadExtractor)
    with pytest.raises(TypeError, match="immutable"):
        param([1], "mutable")


def test_extractor_takes_a_config_or_params(tmp_path) -> None:
    d = _toy_folder(tmp_path)
    assert ToyExtractor(d, frame_interval=1).config == ToyConfig(frame_interval=1.0)
    assert ToyExtractor(d, ToyConfig(pooled="mean")).config.pooled == "mean"
    with pytest.raises(ParameterError, match="toy.pooled"):
        ToyExtractor(d, ToyConfig(pooled="max"))  # a config built directly is checked too
    with pytest.raises(ParameterError, match="unknown parameter 'nope'"):
        ToyExtractor(d, nope=1)


def test_provenance_is_what_the_folder_says(tmp_path) -> None:
    d = _toy_folder(tmp_path)
    prov = ToyExtractor(d).provenance()
    assert prov == {"model_dir": str(d.resolve()), "name_or_path": "org/toy-small", "architectures": ["ToyModel"],
                    "model_type": "toy"}
    assert "org/toy-small" not in ToyExtractor(d).spec().canonical_json()  # provenance stays out of the key


# --------------------------------------------------------------------------- presets
def test_register_preset_sets_defaults_and_validates_them(monkeypatch) -> None:
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    family = base.register(ToyExtractor)
    preset = base.register_preset("toy_mean", family, default_model="org/toy-mean", params={"pooled": "mean"},
                                  help="The toy, mean-pooled.", output="[T, 8]")
    assert base._REGISTRY["toy_mean"] is preset and preset.preset_of == "toy"
    assert preset.default_model == "org/toy-mean" and preset.output == "[T, 8]"
    assert preset.Config().pooled == "mean" and preset.Config().frame_interval == 2.0
    assert preset.Config.from_params("toy_mean", {"layer": 2}).pooled == "mean"
    assert issubclass(preset.Config, ToyConfig)
    with pytest.raises(ParameterError, match="toy_bad.pooled"):
        base.register_preset("toy_bad", family, default_model="x", params={"pooled": "max"}, help="")
    with pytest.raises(ValueError, match="already registered"):
        base.register_preset("toy", ToyExtractor, default_model="x", params={}, help="")


# --------------------------------------------------------------------------- the cache key
_SPEC_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    from test_extractor_contract import ToyExtractor
    params = json.loads(sys.argv[2])
    print(ToyExtractor(sys.argv[1], device=sys.argv[3], **params).spec().spec_id)
""")


def _spec_id_in_new_process(folder: Path, params: dict, device: str = "cpu") -> str:
    script = _SPEC_SCRIPT.format(tests=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", script, str(folder), json.dumps(params), device],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_key_is_stable_across_processes_and_folders_and_ignores_run_settings(tmp_path) -> None:
    a = _toy_folder(tmp_path / "one")
    b = _toy_folder(tmp_path / "elsewhere" / "two")
    here = ToyExtractor(a).spec().spec_id
    assert _spec_id_in_new_process(b, {"frame_batch": 1}, device="cuda") == here
    assert ToyExtractor(b, frame_batch=3).spec().spec_id == here
    assert ToyExtractor(a, frame_interval=1.0).spec().spec_id != here  # numbers-changing param


def test_a_format_version_bump_changes_the_key(tmp_path) -> None:
    d = _toy_folder(tmp_path)

    class Bumped(ToyExtractor):
        format_version = 2

    assert Bumped(d).spec().spec_id != ToyExtractor(d).spec().spec_id


# --------------------------------------------------------------------------- discovery
def test_builtin_modules_and_entry_points_are_discovered(tmp_path) -> None:
    site = tmp_path / "site"
    (site / "clmer_toy_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "clmer_toy_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: clmer-toy-plugin\nVersion: 0.1\n")
    (site / "clmer_toy_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[clmer.extractors]\ntoy = clmer_toy_plugin\n")
    (site / "clmer_toy_plugin.py").write_text(textwrap.dedent("""
        from clmer_features.extractors.base import Extractor, register
        @register
        class Plugged(Extractor):
            name = "plugged_toy"
            input = "audio"
            def spec(self): ...
            def load(self): ...
            def extract(self, clips): return []
    """))
    script = ("from clmer_features.extractors import available, import_problems\n"
              "import json; print(json.dumps([available(), import_problems]))")
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    names, problems = json.loads(out.stdout)
    assert problems == {}
    assert "plugged_toy" in names
    assert {"siglip", "bert", "emotion2vec", "asr", "r1omni_vision", "r1omni_audio"} <= set(names)
