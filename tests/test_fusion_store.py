"""Fusion from a real store (written through the store writer), the CLI, the bench record check,
and the import boundary (no decord/funasr/transformers/extractors)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from clmer_features.errors import ClmerError, StoreError
from clmer_fusion.cli import cli
from clmer_fusion.data import load_from_store
from clmer_fusion.train import train_from_store

sys.path.insert(0, str(Path(__file__).parent))
from _fusion_helpers import write_synthetic_store  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(tmp_path_factory.mktemp("fusion_store"), n=400, absent={"wav": [0, 1, 2, 3]})


def test_load_utterance_and_frame_level(store):
    manifest, cache, truth = store
    data = load_from_store(manifest, cache, ["bert", "wav", "vis"], missing="embed")
    assert data.n == 400 and data.present[:4, 1].tolist() == [False] * 4 and data.present[4:].all()
    assert np.abs(data.x["bert"] - truth.x["bert"]).max() < 0.01          # mean pooling, fp16 store
    assert data.classes == truth.classes and np.array_equal(data.y, truth.y)
    assert set(data.spec_ids) == {"bert", "wav", "vis"} and all(len(v) == 12 for v in data.spec_ids.values())
    assert data.missing_report["missing_per_modality"] == {"bert": 0, "wav": 4, "vis": 0}
    drop = load_from_store(manifest, cache, ["bert", "wav"], missing="drop", level="frame")
    assert drop.n == 396 and drop.missing_report["dropped"] == 4
    assert drop.x["wav"].shape == (396, 4, 8) and drop.mask["wav"].all()
    mx = load_from_store(manifest, cache, ["vis"], pool="max")
    assert np.all(mx.x["vis"] >= data.x["vis"] - 1e-3)
    reg = load_from_store(manifest, cache, ["bert"], target="label_value")
    assert reg.task == "regression" and reg.y.dtype == np.float32


def test_unknown_feature_is_a_one_line_store_error(store):
    manifest, cache, _ = store
    with pytest.raises(StoreError, match="no feature 'nope'"):
        load_from_store(manifest, cache, ["nope"])
    with pytest.raises(ClmerError, match="policy"):
        load_from_store(manifest, cache, ["bert"], missing="zero")


def test_train_from_store_api_saves_metrics_and_predictions(store, tmp_path):
    manifest, cache, _ = store
    res = train_from_store(manifest, cache, ["bert", "wav", "vis"], "mlp", missing="embed", lr=1e-2,
                           out_dir=tmp_path / "run")
    assert "war" in res.table() and res.missing_report["policy"] == "embed"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"train", "val", "test"} <= set(metrics["splits"])
    test = metrics["splits"]["test"]
    assert {"war", "uar", "macro_f1", "weighted_f1", "confusion", "n"} <= set(test)
    assert test["war"] > 0.6 and np.sum(test["confusion"]) == test["n"]
    pred = pl.read_csv(tmp_path / "run" / "combined_results.csv")
    assert pred.columns[:5] == ["clip_id", "fold", "set", "label", "pred"]
    probs = pred.select(pl.selectors.starts_with("prob_")).to_numpy()
    assert probs.shape[1] == 4 and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_cli_train_prints_and_writes(store, tmp_path):
    manifest, cache, _ = store
    out = tmp_path / "cli"
    r = CliRunner().invoke(cli, ["train", str(manifest), "--cache", str(cache), "--features", "bert,wav,vis",
                                 "--head", "attention", "--missing", "embed", "--lr", "0.01", "--out", str(out),
                                 "--explain"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "weighted_f1" in r.output and "Shapley value of each modality" in r.output
    assert "missing-modality policy embed: kept 400 of 400" in r.output
    assert (out / "metrics.json").exists() and (out / "combined_results.csv").exists()
    assert (out / "shapley.png").stat().st_size > 1000
    shap = json.loads((out / "shapley.json").read_text())
    assert [(e["fold"], e["set"]) for e in shap] == [("splits", "test")] and "on splits, set test" in r.output
    assert shap[0]["shares"]["bert"] > shap[0]["shares"]["vis"]     # known shares 0.5 / 0.3 / 0.2


def test_cli_kfold_regression(store, tmp_path):
    manifest, cache, _ = store
    r = CliRunner().invoke(cli, ["train", str(manifest), "--cache", str(cache), "--features", "bert",
                                 "--head", "linear", "--target", "label_value", "--protocol", "kfold",
                                 "--out", str(tmp_path / "k")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    splits = json.loads((tmp_path / "k" / "metrics.json").read_text())["splits"]
    assert {f"fold{i}/test" for i in range(1, 6)} <= set(splits) and "acc2_has0" in splits["fold1/test"]


def test_bench_grid_record_and_check(store, tmp_path):
    manifest, cache, _ = store
    cfg = {"manifest": str(manifest), "cache": str(cache), "features": ["bert", "wav"],
           "missing": "drop", "heads": ["linear", "attention"], "seeds": [0, 1],
           "protocols": ["splits", {"name": "logo", "column": "language"}], "train": {"lr": 0.01, "max_epochs": 30},
           "out": str(tmp_path / "bench")}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    r = runner.invoke(cli, ["bench", str(path), "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = tmp_path / "bench"
    rows = pl.read_parquet(out / "results.parquet")
    assert rows.filter(pl.col("set") == "test").height == 2 * 3 * 2 * (1 + 2)   # heads x subsets x seeds x folds
    table = (out / "table.md").read_text()
    assert "| splits | attention | bert+wav | test | 2 |" in table and "| logo | linear | wav | test | 2 |" in table
    rec = json.loads((out / "record.json").read_text())
    assert rec["provenance"]["spec_ids"].keys() == {"bert", "wav"} and rec["fits"] == 2 * 3 * 2 * 2
    assert len(rec["provenance"]["manifest_fingerprint"]) == 16 and rec["revision"]["commit"]
    assert "torch" in rec["versions"] and (out / "shapley.png").exists() and (out / "confusion_splits_linear.png").exists()
    r = runner.invoke(cli, ["bench", "--check", str(out / "record.json"), "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0 and "no differences" in r.output
    rec["rows"][0]["war"] = rec["rows"][0]["war"] + 0.01                  # a tampered number is caught
    (out / "tampered.json").write_text(json.dumps(rec))
    r = runner.invoke(cli, ["bench", "--check", str(out / "tampered.json"), "--quiet"])
    assert r.exit_code == 1 and "1 difference(s)" in r.output and "war" in r.output


def test_train_and_bench_check_read_from_s3(s3_cache, tmp_path):
    """The same synthetic store on a local S3 server and on disk: training from either gives the
    same numbers, and a bench recorded from S3 passes --check (reading S3 again)."""
    manifest, cache, _ = write_synthetic_store(tmp_path, n=120)
    _, s3, _ = write_synthetic_store(tmp_path, n=120, cache=s3_cache)
    runs = {}
    for name, root in (("disk", cache), ("s3", s3)):
        r = CliRunner().invoke(cli, ["train", str(manifest), "--cache", str(root), "--features", "bert,wav",
                                     "--head", "linear", "--lr", "0.01", "--out", str(tmp_path / name)],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        test = json.loads((tmp_path / name / "metrics.json").read_text())["splits"]["test"]
        runs[name] = {k: v for k, v in test.items() if k != "seconds"}
    assert runs["s3"] == runs["disk"] and runs["s3"]["n"] > 0 and runs["s3"]["war"] > 0.5
    cfg = {"manifest": str(manifest), "cache": s3, "features": ["bert", "wav"], "heads": ["linear"], "seeds": [0],
           "protocols": ["splits"], "train": {"lr": 0.01, "max_epochs": 10}, "out": str(tmp_path / "bench")}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(cli, ["bench", str(tmp_path / "bench.yaml"), "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["bench", "--check", str(tmp_path / "bench" / "record.json"), "--quiet"],
                           catch_exceptions=False)
    assert r.exit_code == 0 and "no differences" in r.output, r.output


def test_import_boundary_no_heavy_modules():
    code = (
        "import sys\n"
        "import clmer_fusion, clmer_fusion.data, clmer_fusion.fit, clmer_fusion.train, clmer_fusion.heads,"
        " clmer_fusion.protocols, clmer_fusion.metrics, clmer_fusion.explain, clmer_fusion.bench,"
        " clmer_fusion.record, clmer_fusion.plots, clmer_fusion.synthetic, clmer_fusion.train_cmds\n"
        "import clmer_features.store, clmer_features.manifest\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('decord', 'funasr', 'transformers', 'faster_whisper')"
        " or m.startswith(('clmer_features.extractors', 'clmer_features.engine', 'clmer_features.media'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_bench_workers_give_the_same_numbers():
    from clmer_fusion.bench import run_grid

    cfg = {"synthetic": {"n": 600, "dims": [6, 6, 6]}, "heads": ["linear", "mlp"], "seeds": [0, 1],
           "train": {"hidden": 16, "max_epochs": 20}}
    one = run_grid(cfg, progress=False)
    two = run_grid({**cfg, "workers": 2}, progress=False)
    assert one.record["rows_digest"] == two.record["rows_digest"]
    assert one.record["shapley"] == two.record["shapley"]
