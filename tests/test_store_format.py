"""The store as a versioned contract: the format written at every level, a newer format
refused in one line, format 1 stores (written by clmer before the format was stamped)
still read and resumed, and every level a zarr node that zarr-python walks."""
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import zarr

from clmer_features.errors import StoreError
from clmer_features.spec import FeatureSpec
from clmer_features.store import layout as L
from clmer_features.store import open_store, part_name

FORMAT1 = Path(__file__).parent / "fixtures" / "store_format1"  # written by fixtures/store_format1/make.py at 0fa17e5
SPEC = FeatureSpec.create("siglip", model_id="google/siglip-base-patch16-224", weights_digest="d1", params={"interval": 2.0})


def rows_for(i):  # what make.py wrote for clip c<i>
    return np.random.default_rng(i).standard_normal((i % 4 + 1, 8)).astype(np.float32)


def write_store(root, n=10, parts=((0, 5), (5, 10))):
    store = open_store(root, "ds", create=True)
    clips = {"clip_id": [f"c{i}" for i in range(n)], "media_key": [f"k{i}" for i in range(n)], "text_key": [None] * n}
    store.write_clips(SimpleNamespace(df=pl.DataFrame(clips, schema={"clip_id": pl.Utf8, "media_key": pl.Utf8, "text_key": pl.Utf8})))
    fw = store.feature_writer(SPEC)
    for lo, hi in parts:
        with fw.part(part_name([f"k{i}" for i in range(lo, hi)])) as p:
            for i in range(lo, hi):
                v = rows_for(i)
                p.add(f"k{i}", f"c{i}", v, times=np.arange(len(v)) * 2.0, pooled=v.sum(0))
    fw.finalize()
    return store, fw


@pytest.fixture()
def format1(tmp_path):
    shutil.copytree(FORMAT1 / "ds", tmp_path / "cache" / "ds")
    return open_store(tmp_path / "cache", "ds")


def test_the_format_is_written_at_every_level(tmp_path):
    store, fw = write_store(tmp_path / "cache")
    stamp = {"store_format": L.STORE_FORMAT, "written_by": "clmer 0.1.0"}
    assert L.STORE_FORMAT == 2
    assert stamp.items() <= L.node_attrs(store.root).items()
    assert stamp.items() <= L.node_attrs(fw.dir).items()
    assert stamp.items() <= L.read_json(fw.dir / L.COMPLETE_FILE).items()
    for part in fw.committed_parts():
        assert stamp.items() <= L.read_json(part / L.PART_FILE).items()
        assert stamp.items() <= L.node_attrs(part).items()


def test_a_newer_format_is_refused_in_one_line_naming_the_writer(tmp_path):
    store, fw = write_store(tmp_path / "cache")
    complete = L.read_json(fw.dir / L.COMPLETE_FILE)
    L.atomic_write_json(fw.dir / L.COMPLETE_FILE, {**complete, "store_format": 3, "written_by": "clmer 9.1"})
    with pytest.raises(StoreError) as ei:
        store.feature("siglip")
    msg = str(ei.value)
    assert "\n" not in msg and "written by clmer 9.1 in store format 3" in msg and "reads store formats up to 2" in msg
    assert str(fw.dir / L.COMPLETE_FILE) in msg
    # a writer never adds parts to a spec or a dataset of a newer format
    L.update_node_attrs(fw.dir, {"store_format": 3, "written_by": "clmer 9.1"})
    with pytest.raises(StoreError, match="written by clmer 9.1 in store format 3"):
        store.feature_writer(SPEC)
    L.update_node_attrs(store.root, {"store_format": 4, "written_by": "clmer 10.0"})
    with pytest.raises(StoreError, match=r"ds: written by clmer 10.0 in store format 4"):
        open_store(tmp_path / "cache", "ds")


def test_a_newer_part_is_refused_by_finalize(tmp_path):
    store, fw = write_store(tmp_path / "cache")
    part = fw.committed_parts()[0]
    L.atomic_write_json(part / L.PART_FILE, {**L.read_json(part / L.PART_FILE), "store_format": 3, "written_by": "clmer 9.1"})
    with pytest.raises(StoreError, match=f"{part.name}/PART.json: written by clmer 9.1 in store format 3"):
        fw.finalize()


def test_a_format1_store_reads_checks_and_resumes_without_recomputing(format1):
    fdir = format1.root / "features" / "siglip" / SPEC.spec_id
    assert "store_format" not in L.read_json(fdir / L.COMPLETE_FILE)  # really written before the format was stamped
    r = format1.feature("siglip")
    assert r.format == 1 and r.clip_ids == [f"c{i}" for i in range(8) if i != 3]
    for i in (0, 5, 7):
        np.testing.assert_array_equal(r.get(f"c{i}"), rows_for(i).astype(np.float16))
        np.testing.assert_array_equal(r.times(f"c{i}"), np.arange(i % 4 + 1) * 2.0)
    np.testing.assert_allclose(r.pooled(["c1"], how="model")[0], rows_for(1).sum(0), rtol=1e-6)
    values, offsets = r.sequences()
    assert offsets[-1] == sum(i % 4 + 1 for i in range(8) if i != 3)

    # resume: the old clips are done; two new clips go into a format 2 part beside the old ones
    keys = dict(format1.clips().select("clip_id", "media_key").iter_rows())
    fw = format1.feature_writer(SPEC)
    assert fw.done_keys() == {keys[f"c{i}"] for i in range(8)}
    with fw.part(part_name([keys["c8"], keys["c9"]])) as p:
        for i in (8, 9):
            p.add(keys[f"c{i}"], f"c{i}", rows_for(i), times=np.arange(i % 4 + 1) * 2.0, pooled=rows_for(i).sum(0))
    summary = fw.finalize()
    assert summary.clips == 9 and summary.parts == 3
    r = open_store(format1.root.parent, "ds").feature("siglip")
    assert r.format == 2 and len(r) == 9
    for i in (0, 8, 9):
        np.testing.assert_array_equal(r.get(f"c{i}"), rows_for(i).astype(np.float16))
    assert r._index.filter(pl.col("clip_id").is_in(["c8", "c9"]))["xxh3_64"].null_count() == 0
    assert r._index.filter(pl.col("clip_id") == "c0")["xxh3_64"].null_count() == 1  # old part: no per-clip checksum
    walk_feature(fw.dir)  # the resumed format 1 feature is a zarr hierarchy now


def test_a_rerun_of_extract_migrates_a_format1_spec_without_recomputing(format1):
    """A format 1 spec is stale (extract finalizes a spec whenever ``stale_reason`` says so,
    even with nothing to compute): refinalized, it is format 2 and zarr walks it, with the
    same parts; verify finds the same (nothing but two clips not extracted yet) before and after."""
    from clmer_features.store.maintenance import verify
    from clmer_features.store.writer import stale_reason

    fdir = format1.root / "features" / "siglip" / SPEC.spec_id
    todo = [f"siglip/{SPEC.spec_id}: 2 clip(s) of the manifest snapshot are not extracted yet (rerun extract)"]  # c8, c9
    rep = verify(format1)
    assert not rep.corrupt and rep.unfinished == todo  # the old format itself is no finding
    assert stale_reason(fdir).startswith("finalized in store format 1: a rerun of extract rewrites its metadata")
    parts = sorted(p.name for p in L.committed_parts(fdir))
    fw = format1.feature_writer(SPEC)  # what extract does: open the writer, compute nothing new, finalize
    fw.finalize()
    assert stale_reason(fdir) is None and L.format_of(L.read_json(fdir / L.COMPLETE_FILE)) == 2
    assert sorted(p.name for p in L.committed_parts(fdir)) == parts  # no part was rewritten
    rep = verify(format1)
    assert not rep.corrupt and rep.unfinished == todo
    walk_feature(fdir)


def walk_feature(spec_dir: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = zarr.open_group(spec_dir, mode="r")
        nodes = dict(g.members(max_depth=None))
        for name, node in nodes.items():
            if isinstance(node, zarr.Array):
                node[...]  # every chunk decodes (and its checksum holds)
    return nodes


def test_zarr_walks_every_level_without_warnings(tmp_path):
    store, fw = write_store(tmp_path / "cache")
    with fw.part("p-late") as p:  # committed after finalize: not part of the finalized feature
        p.add("k99", "c99", rows_for(1))
    (fw.parts_dir / ".tmp-p-crashed-1234").mkdir()
    nodes = walk_feature(fw.dir)
    parts = sorted(p.name for p in fw.committed_parts() if p.name != "p-late")
    want = {"parts"} | {f"parts/{p}" for p in parts} | {f"parts/{p}/{a}" for p in parts for a in ("values", "times", "pooled")}
    assert set(nodes) == want
    g = zarr.open_group(fw.dir, mode="r")
    assert g.attrs["spec"]["feature"] == "siglip" and g.attrs["store_format"] == 2
    part = g[f"parts/{parts[0]}"]
    assert part.attrs["clips"] == 5 and part.attrs["store_format"] == 2
    idx = pl.read_parquet(fw.dir / L.INDEX_FILE).filter(pl.col("clip_id") == "c2").row(0, named=True)
    np.testing.assert_array_equal(g[f"parts/{idx['part']}/values"][idx["row_start"] : idx["row_end"]], rows_for(2).astype(np.float16))
    # the levels above are zarr groups too
    for level, attrs in [(store.root, {"dataset": "ds"}), (store.root / "features", {}), (fw.dir.parent, {"feature": "siglip"})]:
        assert attrs.items() <= zarr.open_group(level, mode="r").attrs.asdict().items()


README = Path(__file__).parents[1] / "README.md"


def readme_recipe() -> str:
    text = README.read_text()
    start = text.index("<!-- zarr-recipe -->")
    block = text[start:].split("```python\n", 1)[1].split("```", 1)[0]
    return block


def test_readme_recipe_reads_a_clip_with_zarr_and_polars_alone(tmp_path):
    store = open_store(tmp_path / "cache", "clips", create=True)
    ids = [f"clip_{i:04d}" for i in range(4)]
    store.write_clips(SimpleNamespace(df=pl.DataFrame({"clip_id": ids, "media_key": [f"k{i}" for i in range(4)]})))
    spec = FeatureSpec.create("siglip", model_id="m", params={"interval": 2.0})
    fw = store.feature_writer(spec)
    want = {}
    for part, members in (("p-a", [3, 1]), ("p-b", [0, 2])):
        with fw.part(part) as p:
            for i in members:
                want[ids[i]] = np.random.default_rng(i).standard_normal((3 + i, 8)).astype(np.float16)
                p.add(f"k{i}", ids[i], want[ids[i]], times=np.arange(3 + i) * 2.0)
    fw.finalize()
    script = (
        "import sys, numpy as np\n"
        + readme_recipe()
        + "\nassert not [m for m in sys.modules if m.startswith('clmer')], 'the recipe imported clmer'\n"
        + "np.save('rows.npy', rows)\n"
    )
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "rows.npy"), want["clip_0001"])


def test_importing_the_store_pulls_no_encoder_stack():
    code = (
        "import sys, clmer_features.store, clmer_features.store.maintenance\n"
        "heavy = [m for m in ('torch', 'transformers', 'funasr', 'decord', 'clmer_features.extractors') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
