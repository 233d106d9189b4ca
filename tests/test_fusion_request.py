"""Heads from the cache alone: labels without media, one request shared by every command, spec
choice in words, the freshness check, the PyTorch dataset, the bench's output folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from clmer_features.errors import ClmerError, StoreError
from clmer_features.spec import FeatureSpec
from clmer_features.store import open_store
from clmer_fusion.cli import cli
from clmer_fusion.request import Request, StaleFeaturesError, load, spec_differences

sys.path.insert(0, str(Path(__file__).parent))
from _fusion_helpers import write_synthetic_store  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FEATS = ["bert", "wav", "vis"]


@pytest.fixture(scope="module")
def media_store(tmp_path_factory):
    """A store keyed by media fingerprints (as extraction writes it), and a copy of the cache and the
    manifest in another folder where the media do not exist."""
    root = tmp_path_factory.mktemp("with_media")
    manifest, cache, truth = write_synthetic_store(root, n=240, media=True, absent={"wav": [0, 1]})
    away = tmp_path_factory.mktemp("no_media")
    shutil.copytree(cache, away / "cache")
    shutil.copy(manifest, away / manifest.name)
    assert not (away / "media").exists()
    return manifest, cache, away / manifest.name, away / "cache"


def _train(manifest, cache, out, *extra):
    r = CliRunner().invoke(cli, ["train", str(manifest), "--cache", str(cache), "--features", ",".join(FEATS),
                                 "--head", "mlp", "--lr", "0.01", "--max-epochs", "30", "--out", str(out),
                                 "--explain", *extra], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    splits = json.loads((out / "metrics.json").read_text())
    for v in splits["splits"].values():
        v.pop("seconds")                                                    # timings differ run to run
    return splits, json.loads((out / "shapley.json").read_text())


def test_train_explain_and_bench_give_the_same_numbers_without_the_media(media_store, tmp_path):
    manifest, cache, far_manifest, far_cache = media_store
    near = _train(manifest, cache, tmp_path / "near")
    far = _train(far_manifest, far_cache, tmp_path / "far")
    assert near[0]["splits"] == far[0]["splits"] and near[1] == far[1]
    assert near[0]["splits"]["test"]["war"] > 0.6 and near[0]["missing"]["dropped"] == 2
    runs = {}
    for name, (m, c) in {"near": (manifest, cache), "far": (far_manifest, far_cache)}.items():
        cfg = {"manifest": str(m), "cache": str(c), "features": ["bert", "wav"], "heads": ["linear"],
               "seeds": [0], "train": {"lr": 0.01, "max_epochs": 20}, "out": str(tmp_path / f"bench_{name}")}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        r = CliRunner().invoke(cli, ["bench", str(tmp_path / f"{name}.yaml"), "--quiet"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        runs[name] = json.loads((tmp_path / f"bench_{name}" / "record.json").read_text())
        r = CliRunner().invoke(cli, ["bench", "--check", str(tmp_path / f"bench_{name}" / "record.json"), "--quiet"])
        assert r.exit_code == 0 and "no differences" in r.output, r.output
    assert runs["near"]["rows"] == runs["far"]["rows"] and runs["near"]["shapley"] == runs["far"]["shapley"]
    # the record's fingerprint does not depend on the media being there (store keys, not files)
    assert runs["near"]["provenance"]["manifest_fingerprint"] == runs["far"]["provenance"]["manifest_fingerprint"]
    from clmer_features.manifest import read_manifest

    assert runs["near"]["provenance"]["manifest_fingerprint"] == read_manifest(manifest).fingerprint()


def test_no_media_file_is_opened(media_store, monkeypatch):
    manifest, cache, _, _ = media_store
    import clmer_features.manifest as M

    def refuse(path):
        raise AssertionError(f"fingerprinted {path}")

    monkeypatch.setattr(M, "file_fingerprint", refuse)
    data = load(Request.create(manifest, cache, FEATS))
    assert data.n == 238
    with pytest.raises(AssertionError, match="fingerprinted"):
        load(Request.create(manifest, cache, FEATS, check_fresh=True))


def test_check_fresh_names_the_changed_clips(tmp_path):
    manifest, cache, _ = write_synthetic_store(tmp_path, n=60, media=True)
    req = Request.create(manifest, cache, ["bert"], check_fresh=True)
    assert load(req).n == 60                                                       # fresh: fine
    clip = tmp_path / "media" / "clip000007.mp4"
    assert clip.exists(), sorted(p.name for p in (tmp_path / "media").iterdir())[:3]
    clip.write_bytes(b"an edited video")
    with pytest.raises(StaleFeaturesError, match=r"1 clip\(s\) changed .*: clip000007; rerun"):
        load(req)
    r = CliRunner().invoke(cli, ["train", str(manifest), "--cache", str(cache), "--features", "bert", "--head", "linear",
                                 "--check-fresh", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "clip000007" in str(r.exception)
    assert load(Request.create(manifest, cache, ["bert"])).n == 60                # not asked: not checked


def _second_spec(manifest, cache, name="bert", tag="other", dim=8):
    from clmer_features.manifest import read_manifest

    man = read_manifest(manifest)
    store = open_store(cache, man.dataset)
    spec = FeatureSpec.create(name, extractor="synthetic", model_id="synthetic/none",
                              params={"dim": dim, "tag": tag, "frame_interval": 1.0})
    fw = store.feature_writer(spec, input="text")
    with fw.part("p0") as part:
        for cid, key in zip(man.clip_ids, man.keys("text")):
            part.add(key, cid, np.ones((2, dim), np.float32))
    fw.finalize()
    return spec.spec_id


def test_several_specs_are_listed_in_words_and_chosen_with_spec(tmp_path):
    manifest, cache, _ = write_synthetic_store(tmp_path, n=60)
    other = _second_spec(manifest, cache)
    with pytest.raises(StoreError) as err:
        load(Request.create(manifest, cache, ["bert", "vis"]))
    msg = str(err.value)
    assert "feature 'bert' has 2 finalized specs; choose one with --spec bert=SPEC_ID" in msg
    assert f"bert={other}: frame interval 1.0; tag other" in msg and "frame interval not set; tag bert" in msg
    assert "{" not in msg.split("\n", 1)[1] and "'" not in msg.split("\n", 1)[1]      # words, not Python
    first = [s.spec_id for s in open_store(cache, "synth").specs("bert") if s.spec_id != other][0]
    data = load(Request.create(manifest, cache, ["bert"], spec_ids={"bert": other}))
    assert data.spec_ids == {"bert": other} and np.all(data.x["bert"] == 1)
    r = CliRunner().invoke(cli, ["train", str(manifest), "--cache", str(cache), "--features", "bert", "--head", "linear",
                                 "--spec", f"bert={first[:6]}", "--max-epochs", "5", "--out", str(tmp_path / "o")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["spec_ids"] == {"bert": first}
    with pytest.raises(StoreError, match="--spec bert=ffffff matches no stored spec"):
        load(Request.create(manifest, cache, ["bert"], spec_ids={"bert": "ffffff"}))
    with pytest.raises(ClmerError, match="write FEATURE=SPEC_ID"):
        from clmer_fusion.request import parse_spec_options
        parse_spec_options(["bert"])


def test_spec_differences_formats_lists_and_flags():
    class S:
        def __init__(self, sid, params):
            self.feature, self.spec_id, self.finalized_ns = "r1omni_vision", sid, 0
            self.spec = FeatureSpec.create("r1omni_vision", params=params)

    lines = spec_differences([S("a", {"shape": [8, 196, 768], "fp16": True}), S("b", {"shape": [8, 16, 24], "fp16": False})])
    assert lines == ["r1omni_vision=a: fp16 yes; shape 8 x 196 x 768 (finalized not finalized)",
                     "r1omni_vision=b: fp16 no; shape 8 x 16 x 24 (finalized not finalized)"]


def test_a_table_feature_is_named_a_table(tmp_path):
    from clmer_features.manifest import read_manifest

    manifest, cache, _ = write_synthetic_store(tmp_path, n=30)
    man = read_manifest(manifest)
    store = open_store(cache, man.dataset)
    fw = store.feature_writer(FeatureSpec.create("asr", extractor="synthetic"), input="text")
    with fw.part("p0") as part:
        for cid, key in zip(man.clip_ids, man.keys("text")):
            part.add_record(key, cid, {"text": "hello", "language": "en"})
    fw.finalize()
    r = CliRunner().invoke(cli, ["train", str(manifest), "--cache", str(cache), "--features", "asr"])
    assert r.exit_code != 0
    assert "asr is a table" in str(r.exception) and "not an array" in str(r.exception)


def test_one_load_for_train_and_explain(media_store, tmp_path, monkeypatch):
    manifest, cache, _, _ = media_store
    import clmer_fusion.request as R

    calls = []
    real = R.open_sources
    monkeypatch.setattr(R, "open_sources", lambda *a, **k: calls.append(1) or real(*a, **k))
    _train(manifest, cache, tmp_path / "once")
    assert len(calls) == 1


def test_crosslingual_explain_says_what_it_explained(media_store, tmp_path):
    manifest, cache, _, _ = media_store
    r = CliRunner().invoke(cli, ["train", str(manifest), "--cache", str(cache), "--features", "bert,vis",
                                 "--head", "linear", "--protocol", "crosslingual", "--max-epochs", "10",
                                 "--explain", "--out", str(tmp_path / "x")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    shap = json.loads((tmp_path / "x" / "shapley.json").read_text())
    langs = sorted(pl.read_csv(manifest)["language"].unique().to_list())
    want = [(f"language={a}", s) for a in langs for s in [f"in:{a}"] + [f"cross:{b}" for b in langs if b != a]]
    assert [(e["fold"], e["set"]) for e in shap] == want
    assert f"explained {len(want)} evaluation set(s)" in r.output and "on language=en, set cross:zh" in r.output


def test_shares_are_undefined_when_the_total_is_not_positive():
    from clmer_fusion.explain import shares_of

    sh, note = shares_of({"a": 0.3, "b": -0.1}, "uar")
    assert sh == pytest.approx({"a": 1.5, "b": -0.5}) and "negative share (b) lowers uar" in note
    sh, note = shares_of({"a": 0.05, "b": -0.1}, "uar")
    assert sh == {"a": None, "b": None} and "shares undefined" in note and "-0.0500" in note
    from clmer_fusion.bench import shapley_markdown

    md = shapley_markdown({"splits/linear": {"metric": "uar", "metric_shapley": {"a": 0.05, "b": -0.1},
                                             "shares": sh, "shares_note": note, "groups": []}})
    assert "| a | 0.0500 | n/a |" in md and "shares undefined" in md


def test_dataset_and_collate_with_worker_processes(media_store):
    from torch.utils.data import DataLoader

    from clmer_fusion.dataset import StoreDataset, collate

    manifest, cache, far_manifest, far_cache = media_store
    ds = StoreDataset(Request.create(far_manifest, far_cache, ["wav", "bert"], missing="embed"))
    assert len(ds) == 240 and ds.classes == sorted(set(pl.read_csv(manifest)["label"].to_list()))
    item = ds[0]
    assert item["x"]["wav"].shape == (0, 8) and item["present"].tolist() == [False, True]
    assert item["times"]["bert"].tolist() == [0.0, 2.0, 4.0, 6.0]
    loader = DataLoader(ds, batch_size=50, shuffle=False, collate_fn=collate, num_workers=2)
    batches = list(loader)
    assert [len(b["clip_id"]) for b in batches] == [50, 50, 50, 50, 40]
    b = batches[0]
    assert b["x"]["bert"].shape == (50, 4, 8) and b["mask"]["bert"].all()
    assert b["x"]["wav"].shape == (50, 4, 8) and b["mask"]["wav"][:2].sum() == 0 and b["mask"]["wav"][2:].all()
    assert b["times"]["wav"].shape == (50, 4) and b["y"].dtype.is_floating_point is False
    # the same rows the built-in frame-level heads train on
    data = load(Request.create(far_manifest, far_cache, ["wav", "bert"], missing="embed", level="frame"))
    got = np.concatenate([bb["x"]["bert"].numpy() for bb in batches])
    assert np.array_equal(got, data.x["bert"]) and np.array_equal(np.concatenate([bb["y"].numpy() for bb in batches]), data.y)
    import pickle                                                    # what a spawned worker gets

    again = pickle.loads(pickle.dumps(ds))
    assert again._src is None and np.array_equal(again[5]["x"]["bert"], ds[5]["x"]["bert"])
    drop = StoreDataset(Request.create(manifest, cache, ["wav", "bert"]))
    assert len(drop) == 238 and drop.clip_ids[0] == ds.clip_ids[2]


def test_bench_writes_under_the_working_directory(tmp_path, monkeypatch):
    import clmer_fusion

    example = Path(clmer_fusion.__file__).parent / "examples" / "bench_synthetic.yaml"
    cfg = yaml.safe_load(example.read_text())
    cfg.update(synthetic={**cfg["synthetic"], "n": 300}, heads=["linear"], seeds=[0], protocols=["splits"])
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "bench_synthetic.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["bench", "conf/bench_synthetic.yaml", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "bench_synthetic" / "record.json").exists()
    assert not (tmp_path / "conf" / "bench_synthetic").exists()
    r = CliRunner().invoke(cli, ["bench", "--check", "runs/bench_synthetic/record.json", "--quiet"])
    assert r.exit_code == 0 and "no differences" in r.output


def test_fusion_cli_imports_nothing_heavy_and_answers_help_fast():
    code = ("import sys; import clmer_fusion.cli\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'funasr', 'decord',"
            " 'faster_whisper', 'zarr', 'polars', 'numpy', 'matplotlib'}))\n"
            "print([m for m in sys.modules if m.startswith(('clmer_features.extractors', 'clmer_features.engine',"
            " 'clmer_features.media', 'clmer_demo'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "[]"]
    exe = Path(sys.executable).parent / "clmer-fusion"
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
        best = min(best, time.perf_counter() - t0)
        assert r.returncode == 0 and "train" in r.stdout
    assert best < 0.5 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1)), best
