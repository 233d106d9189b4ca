import os
import time

import numpy as np
import pytest
import zarr

from clmer_features.errors import SpecMismatchError, StoreError
from clmer_features.manifest import read_manifest
from clmer_features.spec import FeatureSpec
from clmer_features.store import open_store, part_name
from clmer_features.store.maintenance import gc, status, verify

SPEC = FeatureSpec.create("siglip", model_id="google/siglip-base-patch16-224", weights_digest="d1", params={"interval": 2.0})


@pytest.fixture()
def manifest(tmp_path):
    (tmp_path / "media").mkdir()
    lines = ["clip_id,video,label,split"]
    for i in range(10):
        (tmp_path / "media" / f"c{i}.mp4").write_bytes(os.urandom(500 + i))
        lines.append(f"c{i},media/c{i}.mp4,{'ab'[i % 2]},{'train' if i < 7 else 'test'}")
    (tmp_path / "ds.csv").write_text("\n".join(lines) + "\n")
    return read_manifest(tmp_path / "ds.csv")


def rows_for(i):
    rng = np.random.default_rng(i)
    return rng.standard_normal((i % 4 + 1, 8)).astype(np.float32)


def fill(store, manifest, spec=SPEC, parts=((0, 5), (5, 10)), fail=()):
    fw = store.feature_writer(spec)
    keys = manifest.keys("media")
    for lo, hi in parts:
        with fw.part(part_name(keys[lo:hi])) as p:
            for i in range(lo, hi):
                if i in fail:
                    p.fail(keys[i], f"c{i}", "decode", "DECORDError", "truncated file")
                else:
                    v = rows_for(i)
                    p.add(keys[i], f"c{i}", v, times=np.arange(len(v)) * 2.0, pooled=v.sum(0))
    fw.finalize()
    return fw


def test_round_trip_values_times_pooled(tmp_path, manifest):
    store = open_store(tmp_path / "cache", "ds", create=True)
    store.write_clips(manifest)
    fill(store, manifest, fail={3})
    r = store.feature("siglip")
    assert r.clip_ids == [f"c{i}" for i in range(10) if i != 3]
    for i in (0, 5, 9):
        np.testing.assert_array_equal(r.get(f"c{i}"), rows_for(i).astype(np.float16))
        np.testing.assert_array_equal(r.times(f"c{i}"), np.arange(i % 4 + 1) * 2.0)
    assert r.get("c0").dtype == np.float16
    ids = ["c9", "c0", "c5", "c1"]
    many = r.get_many(ids)
    for cid, got in zip(ids, many):
        np.testing.assert_array_equal(got, r.get(cid))
    mean = r.pooled(ids)
    assert mean.shape == (4, 8) and mean.dtype == np.float32
    np.testing.assert_allclose(mean[0], rows_for(9).astype(np.float16).astype(np.float32).mean(0), rtol=1e-6)
    np.testing.assert_allclose(r.pooled(ids, how="max")[1], rows_for(0).astype(np.float16).astype(np.float32).max(0))
    np.testing.assert_allclose(r.pooled(["c1"], how="model")[0], rows_for(1).sum(0), rtol=1e-6)
    values, offsets = r.sequences(ids)
    assert offsets.tolist() == [0, 2, 3, 5, 7]
    np.testing.assert_array_equal(values[offsets[2]:offsets[3]], r.get("c5"))
    with pytest.raises(KeyError, match="c3.*failed \\(error\\) at decode: DECORDError: truncated file"):
        r.get("c3")
    assert r.failures()["clip_id"].to_list() == ["c3"]
    assert store.ledger().select("clip_id", "feature", "kind", "attempt").row(0) == ("c3", "siglip", "error", 1)


def test_many_clip_reads_hit_each_part_once(tmp_path, manifest, monkeypatch):
    from clmer_features.store.rawread import RawRows

    store = open_store(tmp_path / "cache", "ds", create=True)
    store.write_clips(manifest)
    fill(store, manifest)
    r = store.feature("siglip")
    calls = []
    orig = RawRows.read
    monkeypatch.setattr(RawRows, "read", lambda self, a, b, out=None: (calls.append((a, b)), orig(self, a, b, out))[1])
    r.get_many(r.clip_ids)
    assert len(calls) == 2  # two parts in storage order: one read each


def test_raw_reads_equal_zarr_reads_and_fallback(tmp_path, manifest):
    from clmer_features.store.rawread import RawRows

    store = open_store(tmp_path / "cache", "ds", create=True)
    store.write_clips(manifest)
    fw = fill(store, manifest)
    part = fw.committed_parts()[0]
    raw = RawRows.open(part / "values")
    arr = zarr.open_array(part / "values", mode="r")
    for a, b in [(0, arr.shape[0]), (1, 3), (2, 2), (arr.shape[0] - 1, arr.shape[0])]:
        np.testing.assert_array_equal(raw.read(a, b), arr[a:b])
    # the shard we write ourselves is what zarr itself reads, across inner chunks and padding
    from clmer_features.store.writer import write_uncompressed_shard

    big = np.random.default_rng(1).standard_normal((1300, 5)).astype(np.float16)
    zarr.create_array(tmp_path / "own", shape=big.shape, chunks=(512, 5), shards=(1536, 5), dtype="float16", compressors=None)
    write_uncompressed_shard(tmp_path / "own" / "c" / "0" / "0", big, 512, 1536)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "own", mode="r")[:], big)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "own", mode="r")[700:1299], big[700:1299])
    np.testing.assert_array_equal(RawRows.open(tmp_path / "own").read(500, 1300), big[500:1300])
    # A compressed array is not ours to read byte-wise: the reader falls back to zarr.
    zarr.create_array(tmp_path / "z", shape=(10, 4), chunks=(5, 4), shards=(10, 4), dtype="float16")
    assert RawRows.open(tmp_path / "z") is None


def test_exception_inside_a_part_leaves_nothing(tmp_path, manifest):
    store = open_store(tmp_path / "cache", "ds", create=True)
    store.write_clips(manifest)
    fw = store.feature_writer(SPEC)
    keys = manifest.keys("media")
    with pytest.raises(RuntimeError):
        with fw.part("p-x") as p:
            p.add(keys[0], "c0", rows_for(0))
            raise RuntimeError("worker died")
    assert fw.done_keys() == set()
    assert [p.name for p in (fw.dir / "parts").iterdir()] == ["zarr.json"]  # the parts group only


def test_abandoned_tmp_part_is_invisible_and_gc_removes_it(tmp_path, manifest):
    store = open_store(tmp_path / "cache", "ds", create=True)
    store.write_clips(manifest)
    fw = fill(store, manifest, parts=((0, 5),))
    crashed = fw.parts_dir / ".tmp-p-dead-1234"
    crashed.mkdir()
    (crashed / "zarr.json").write_text("{}")
    assert len(fw.done_keys()) == 5
    assert store.feature("siglip").missing() == [f"c{i}" for i in range(5, 10)]
    assert gc(store, older_than_s=3600).removed_tmp == []  # might be a live writer
    old = time.time() - 7200
    os.utime(crashed, (old, old))
    assert gc(store, older_than_s=3600).removed_tmp == [crashed]
    assert not crashed.exists()


def test_same_partition_committed_twice_keeps_one(tmp_path, manifest):
    store = open_store(tmp_path / "cache", "ds", create=True)
    store.write_clips(manifest)
    fill(store, manifest, parts=((0, 5),))
    fw = fill(store, manifest, parts=((0, 5), (0, 5), (5, 10)))
    assert len(fw.committed_parts()) == 2
    assert len(store.feature("siglip")) == 10


def test_not_finalized_is_refused(tmp_path, manifest):
    store = open_store(tmp_path / "cache", "ds", create=True)
    store.write_clips(manifest)
    fw = store.feature_writer(SPEC)
    with fw.part("p1") as p:
        p.add(manifest.keys("media")[0], "c0", rows_for(0))
    with pytest.raises(StoreError, match="not finalized"):
        store.feature("siglip")


def test_other_spec_is_refused_showing_both(tmp_path, manifest):
    store = open_store(tmp_path / "cache", "ds", create=True)
    store.write_clips(manifest)
    fill(store, manifest)
    other = FeatureSpec.create("siglip", model_id="google/siglip-base-patch16-224", weights_digest="d1", params={"interval": 1.0})
    with pytest.raises(SpecMismatchError) as ei:
        store.feature("siglip", spec=other)
    msg = str(ei.value)
    assert SPEC.spec_id in msg and other.spec_id in msg and "interval=2.0" in msg and "interval=1.0" in msg
    assert "params.interval: 2.0 != 1.0" in msg
    assert store.feature("siglip", spec=SPEC).spec == SPEC
    with pytest.raises(StoreError, match="no feature 'bert'.*siglip"):
        store.feature("bert")


def test_two_finalized_specs_need_a_choice_and_gc_superseded(tmp_path, manifest):
    store = open_store(tmp_path / "cache", "ds", create=True)
    store.write_clips(manifest)
    fill(store, manifest)
    newer = FeatureSpec.create("siglip", model_id="google/siglip-base-patch16-224", weights_digest="d2", params={"interval": 2.0})
    fill(store, manifest, spec=newer)
    with pytest.raises(StoreError, match="has 2 specs"):
        store.feature("siglip")
    rep = gc(store, superseded=True)  # neither named nor known to be the default: the newest does not win
    assert rep.removed_specs == [] and len(store.specs("siglip")) == 2
    assert rep.undecided and "--keep siglip=SPEC_ID" in rep.undecided[0]
    rep = gc(store, superseded=True, keep={"siglip": SPEC.spec_id})  # the older one, named
    assert [p.name for p in rep.removed_specs] == [newer.spec_id]
    assert store.feature("siglip").spec == SPEC


def test_changed_media_hides_old_rows(tmp_path, manifest):
    store = open_store(tmp_path / "cache", "ds", create=True)
    store.write_clips(manifest)
    fill(store, manifest)
    (manifest.root / "media" / "c2.mp4").write_bytes(os.urandom(700))
    m2 = read_manifest(manifest.path)
    store.write_clips(m2)
    r = open_store(tmp_path / "cache", "ds").feature("siglip")
    assert "c2" not in r and r.missing() == ["c2"]
    assert len(r) == 9


def test_verify_catches_flipped_byte_and_truncated_chunk(tmp_path, manifest):
    store = open_store(tmp_path / "cache", "ds", create=True)
    store.write_clips(manifest)
    fw = fill(store, manifest)
    rep = verify(store)
    assert rep.ok and rep.checked_parts == 2 and rep.checked_files > 6
    chunk = next(p for p in (fw.committed_parts()[0] / "values").rglob("*") if p.is_file() and p.name != "zarr.json")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    rep = verify(store)
    assert not rep.ok and "is corrupt (checksum mismatch" in rep.problems[0]
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data[: len(data) // 3]))
    rep = verify(store)
    assert len(rep.problems) == 1 and "corrupt" in rep.problems[0]
    chunk.unlink()
    assert "is missing" in verify(store).problems[0]


def test_status_counts(tmp_path, manifest):
    store = open_store(tmp_path / "cache", "ds", create=True)
    store.write_clips(manifest)
    fw = store.feature_writer(SPEC)
    keys = manifest.keys("media")
    with fw.part("p1") as p:
        for i in range(6):
            p.add(keys[i], f"c{i}", rows_for(i))
        p.fail(keys[6], "c6", "decode", "DECORDError", "bad")
        p.fail(keys[7], "c7", "decode", "NoVideo", "audio-only row", kind="absent")
    fw.finalize()
    with fw.part("p2") as p:  # committed after finalize: a run in progress
        p.add(keys[8], "c8", rows_for(8))
    (st,) = status(store)
    assert (st.done, st.missing, st.failed, st.absent, st.pending_parts) == (6, 2, 1, 1, 1)


def test_records_table(tmp_path, manifest):
    store = open_store(tmp_path / "cache", "ds", create=True)
    store.write_clips(manifest)
    asr = FeatureSpec.create("asr", model_id="tiny.en", params={"beam_size": 5})
    fw = store.feature_writer(asr)
    keys = manifest.keys("media")
    with fw.part("p1") as p:
        p.add_record(keys[0], "c0", {"text": "hello", "language": "en"})
        p.add_record(keys[1], "c1", {"text": "world", "language": "en"})
    fw.finalize()
    rec = store.feature("asr").records()
    assert rec.select("clip_id", "text").rows() == [("c0", "hello"), ("c1", "world")]


def test_bad_rows_are_refused(tmp_path, manifest):
    store = open_store(tmp_path / "cache", "ds", create=True)
    fw = store.feature_writer(SPEC)
    with pytest.raises(StoreError, match="NaN"):
        with fw.part("p") as p:
            p.add("k", "c0", np.array([[np.nan, 1.0]]))
    with pytest.raises(StoreError, match="2 rows but 3 timestamps"):
        with fw.part("p") as p:
            p.add("k", "c0", np.ones((2, 3)), times=[0, 1, 2])
    with pytest.raises(StoreError, match="different widths"):
        with fw.part("p") as p:
            p.add("k1", "c0", np.ones((2, 3)))
            p.add("k2", "c1", np.ones((2, 4)))
    assert fw.committed_parts() == []


def test_open_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        open_store(tmp_path, "nothing")


def test_text_or_media_keys_follow_the_text_where_the_manifest_has_it(tmp_path):
    (tmp_path / "a.mp4").write_bytes(os.urandom(100))
    (tmp_path / "b.mp4").write_bytes(os.urandom(100))
    path = tmp_path / "t.csv"
    path.write_text("clip_id,video,text\na,a.mp4,hello\nb,b.mp4,\n")
    m = read_manifest(path)
    store = open_store(tmp_path / "cache", "t", create=True)
    store.write_clips(m)
    keys = dict(store.current_keys("text_or_media").iter_rows())
    assert keys == {"a": m.df["text_key"][0], "b": m.df["media_key"][1]}
    spec = FeatureSpec.create("bert", model_id="m", params={"text_source": "manifest|asr:x"})
    fw = store.feature_writer(spec, input="text_or_media")
    with fw.part("p") as p:
        p.add(keys["a"], "a", np.ones((2, 3)))
        p.add(keys["b"], "b", np.ones((2, 3)) * 2)
    fw.finalize()
    assert len(store.feature("bert")) == 2
    path.write_text("clip_id,video,text\na,a.mp4,hello again\nb,b.mp4,\n")  # a's text edited
    store.write_clips(read_manifest(path))
    r = open_store(tmp_path / "cache", "t").feature("bert")
    assert r.missing() == ["a"] and r.clip_ids == ["b"]
    (st,) = status(store)
    assert (st.done, st.missing) == (1, 1)
