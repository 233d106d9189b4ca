"""`clmer-features features` and `--param` come from the extractors' declarations."""
from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from clmer_features import testing as T
from clmer_features.cli import cli
from clmer_features.errors import ClmerError, ParameterError
from clmer_features.extractors import available, get_extractor


def test_features_lists_every_registered_feature_with_its_declaration() -> None:
    r = CliRunner().invoke(cli, ["features", "--json"])
    assert r.exit_code == 0, r.output
    listed = {d["feature"]: d for d in json.loads(r.output)}
    assert sorted(listed) == available()
    for name, d in listed.items():
        cls = get_extractor(name)
        assert (d["family"], d["default_model"], d["input"]) == (cls.family or "-", cls.default_model, cls.input)
        assert [p["name"] for p in d["params"]] == [i.name for i in cls.Config.describe()]
    siglip = {p["name"]: p for p in listed["siglip"]["params"]}
    assert siglip["frame_interval"]["spec"] is True and siglip["frame_interval"]["default"] == 2.0
    assert siglip["frame_batch"]["spec"] is False
    assert listed["bert"]["requires"] == ["asr"]
    # input=faces makes every vision encoder require faces; the listing says so, and it is what they do
    when = {n: d["requires_when"] for n, d in listed.items() if d["requires_when"]}
    assert {"siglip", "clip", "dinov2", "videomae"} <= set(when), sorted(when)
    for name, conds in when.items():
        assert conds == [{"param": "input", "value": "faces", "requires": ["faces"]}], name
        cls = get_extractor(name)
        assert "faces" not in cls.requires and "faces" not in cls(None).requires
        assert "faces" in cls(None, input="faces").requires, name

    text = CliRunner().invoke(cli, ["features", "asr", "siglip"]).output
    assert "--models-dir/openai/whisper-large-v3-turbo" in text
    assert "--param siglip.frame_batch=64  (run-only; an integer >= 1)" in text
    assert "--param asr.precision=\"auto\"  (spec; \"auto\" or \"float32\" or \"float16\" or \"int8\")" in text
    assert "bert" not in text
    assert "requires: faces with --param siglip.input=faces (runs first" in text
    r = CliRunner().invoke(cli, ["features", "nope"])
    assert isinstance(r.exception, ClmerError) and "unknown feature(s) nope" in str(r.exception)


def test_extract_help_lists_the_registry() -> None:
    out = CliRunner().invoke(cli, ["extract", "--help"]).output
    assert all(name in out for name in available())
    assert "clmer-features features" in out


def test_bad_param_is_one_line_before_anything_runs(tmp_path) -> None:
    man = T.write_manifest(tmp_path / "m.csv", [{"clip_id": "a", "text": "hi"}])
    base = ["extract", str(man), "-f", "siglip,bert", "--cache", str(tmp_path / "c"), "--no-progress"]
    r = CliRunner().invoke(cli, base + ["--param", "siglip.frame_intrval=1"])
    assert isinstance(r.exception, ParameterError)
    assert str(r.exception) == "siglip: unknown parameter 'frame_intrval' (parameters: frame_interval, input, frame_batch)"
    r = CliRunner().invoke(cli, base + ["--param", "bert.pooled=max"])
    assert str(r.exception) == "bert.pooled: expected \"cls\" or \"pooler\", got 'max'"
    r = CliRunner().invoke(cli, base + ["--param", "asr.beam_size=2"])
    assert "parameters given for asr, which is not among the features" in str(r.exception)
    assert not (tmp_path / "c").exists()  # refused before the store was touched
    # through the console script: one line on stderr, exit code 2
    cmd = [sys.executable, "-c", "from clmer_features.cli import main; main()", *base,
           "--param", "siglip.frame_interval=abc"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: siglip.frame_interval: expected a number >= 0.01, got 'abc'"
