"""Each recipe's manifest + an imported feature -> a fusion head trains and scores well above chance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clmer_features.interop import export_features, import_features
from clmer_features.manifest import read_manifest
from clmer_features.recipes import build_manifest
from tests._recipes_helpers import MAKERS, label_features, write_npy_folder

fusion_train = pytest.importorskip("clmer_fusion.train", reason="clmer_fusion.train not available")

# The protocol each dataset is evaluated under: its official splits, k folds, or leave-one-session-out.
PROTOCOLS = {
    "chsims2": "splits", "mosei": "splits", "meld": "splits", "mer2025": "splits",
    "dfew": {"name": "kfold", "column": "fold"},
    "iemocap": {"name": "logo", "column": "session"},
}
SIZES = {"chsims2": 45, "mosei": 45, "meld": 45, "mer2025": 45, "dfew": 50, "iemocap": 16}


@pytest.mark.parametrize("dataset", sorted(MAKERS))
def test_head_trains_on_imported_feature(tmp_path: Path, dataset: str) -> None:
    root = tmp_path / dataset
    MAKERS[dataset](root, SIZES[dataset])
    manifest = tmp_path / f"{dataset}.parquet"
    build_manifest(dataset, root, manifest)
    m = read_manifest(manifest)
    ids, labels = m.df["clip_id"].to_list(), m.df["label"].to_list()
    feats = label_features(ids, labels, seq=dataset != "dfew")
    # the feature arrives as an HDF5 file (made by "another tool": our exporter from a first import)
    write_npy_folder(tmp_path / "npy", feats)
    import_features("npy", tmp_path / "npy", m, "first", cache_dir=tmp_path / "cache", progress=False)
    export_features("first", "hdf5", tmp_path / "ext.h5", dataset=dataset, cache_dir=tmp_path / "cache", progress=False)
    s = import_features("hdf5", tmp_path / "ext.h5", m, "ext", cache_dir=tmp_path / "cache", progress=False)
    assert s.imported == len(ids) and s.not_in_source == 0

    res = fusion_train.train_from_store(manifest, tmp_path / "cache", ["ext"], head="linear",
                                        protocol=PROTOCOLS[dataset], max_epochs=60, patience=60, seed=0)
    tests = [r for r in res.rows if r["set"] == "test"]
    assert tests, res.rows
    war = float(np.mean([r["war"] for r in tests]))
    assert war >= 0.9, res.table()  # three well-separated classes: chance is about 0.33
    if dataset == "dfew":
        assert len(tests) == 5
    if dataset == "iemocap":
        assert len(tests) == 5 and sum(r["n"] for r in tests) == len(ids)


def test_regression_head_on_chsims2_sentiment(tmp_path: Path) -> None:
    MAKERS["chsims2"](tmp_path / "sims", 45)
    manifest = tmp_path / "chsims2.parquet"
    build_manifest("chsims2", tmp_path / "sims", manifest)
    m = read_manifest(manifest)
    feats = label_features(m.df["clip_id"].to_list(), m.df["label"].to_list(), seq=False)
    write_npy_folder(tmp_path / "npy", feats)
    import_features("npy", tmp_path / "npy", m, "ext", cache_dir=tmp_path / "cache", progress=False)
    res = fusion_train.train_from_store(manifest, tmp_path / "cache", ["ext"], head="linear", target="label_value",
                                        max_epochs=200, patience=200, seed=0)
    test = res.summary("test")
    assert test["mae"] < 0.25 and test["corr"] > 0.9, res.table()  # labels are -0.6 / 0 / 0.8 by class
