"""Finalize merges runs of small parts into larger ones (a scan of a few large files runs at the
disk's sequential rate, many small ones at about half of it): every clip keeps its rows, times,
pooled vector, record and failures; a reader opened before the merge keeps reading; a damaged
part is left for verify; a crash in the middle loses nothing. Thresholds are shrunk here so that
parts of a few kB count as small."""
from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest

from clmer_features.errors import StoreError
from clmer_features.spec import FeatureSpec
from clmer_features.store import open_store, part_name
from clmer_features.store import layout as L
from clmer_features.store import writer as W
from clmer_features.store.maintenance import gc, verify
from clmer_features.store.reader import CorruptDataError

from _synthetic_store import check, ids, rows, write_parts

RANGES = [(lo, lo + 25) for lo in range(0, 250, 25)]  # 10 parts of about 2.7 kB of values each


def _shrink(monkeypatch) -> None:
    """Parts under 4 kB are small; merged parts grow to about 12 kB (four parts)."""
    monkeypatch.setattr(W, "COMPACT_BELOW", 4000)
    monkeypatch.setattr(W, "COMPACT_TARGET", 12000)


@pytest.fixture
def small(monkeypatch):
    _shrink(monkeypatch)


def _parts(cache, dataset: str = "ds", feature: str = "emb"):
    return open_store(cache, dataset).feature(feature).complete["part_names"]


def _retired(cache) -> list:
    spec_dir = open_store(cache, "ds").feature("emb").dir
    return sorted((spec_dir / L.PARTS_DIR).glob(f"{L.RETIRED_PREFIX}*"))


def test_small_parts_are_merged_and_every_clip_reads_the_same(tmp_path, small):
    fw = write_parts(tmp_path, RANGES)
    before = [p.name for p in fw.committed_parts()]
    summary = fw.finalize()
    names = _parts(tmp_path)
    assert len(before) == 10 and summary.parts == len(names) == 3, names  # 4 + 4 + 2 parts
    assert all(n.startswith("m-") for n in names)
    twin = tmp_path / "twin"
    write_parts(twin, RANGES).finalize()
    assert _parts(twin) == names  # merged parts are named by their clips: the same parts, the same names
    assert len(_retired(tmp_path)) == 10
    check(tmp_path, 250)  # rows, times and a clean verify
    summary = fw.finalize()  # merged parts are not small: nothing to merge again
    assert _parts(tmp_path) == names and summary.clips == 250


def test_a_run_too_small_to_matter_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "COMPACT_BELOW", 30000)  # every part small, but all ten add up to less
    fw = write_parts(tmp_path, RANGES)
    fw.finalize()
    assert sorted(_parts(tmp_path)) == sorted(p.name for p in fw.committed_parts()) and len(_parts(tmp_path)) == 10


def test_records_pooled_and_failures_survive_the_merge(tmp_path, small):
    spec = FeatureSpec.create("tab", model_id="synthetic", params={"dim": 16})
    fw = open_store(tmp_path, "ds", create=True).feature_writer(spec)
    for lo, hi in RANGES:
        with fw.part(part_name(ids(lo, hi))) as p:
            for cid in ids(lo, hi):
                i = int(cid[1:])
                if i % 50 == 7:
                    p.fail(cid, cid, "decode", "DECORDError", f"broken {cid}")
                else:
                    p.add(cid, cid, rows(i), pooled=rows(i)[0] * 2)
                    p._b.records.append({"clip_key": cid, "clip_id": cid, "text": f"words of {cid}"})
    with fw.part("p-retry") as p:  # c0007 fails again (attempt 2), c0057 succeeds on a retry
        p.fail("c0007", "c0007", "decode", "DECORDError", "still broken")
        p.add("c0057", "c0057", rows(57), pooled=rows(57)[0] * 2)
        p._b.records.append({"clip_key": "c0057", "clip_id": "c0057", "text": "words of c0057"})
    fw.finalize()
    store = open_store(tmp_path, "ds")
    r = store.feature("tab")
    assert all(n.startswith("m-") for n in r.complete["part_names"])
    failed = {f"c{i:04d}" for i in range(250) if i % 50 == 7} - {"c0057"}
    assert sorted(r.clip_ids) == sorted(set(ids(0, 250)) - failed)
    for cid in ("c0000", "c0057", "c0249"):
        np.testing.assert_array_equal(r.get(cid), rows(int(cid[1:])).astype(np.float16))
        np.testing.assert_array_equal(r.pooled([cid], how="model")[0], rows(int(cid[1:]))[0] * 2)
    rec = r.records()
    assert rec.height == 250 - len(failed) and rec.filter(pl.col("clip_id") == "c0057")["text"].item() == "words of c0057"
    ledger = store.ledger().filter(pl.col("feature") == "tab")
    assert sorted(ledger["clip_id"].to_list()) == sorted(failed)
    assert ledger.filter(pl.col("clip_id") == "c0007").select("attempt", "message").row(0) == (2, "still broken")
    assert verify(store).ok


def test_a_reader_opened_before_the_merge_keeps_reading(tmp_path, monkeypatch):
    fw = write_parts(tmp_path, RANGES)
    fw.finalize()  # default thresholds: these parts stay as they are
    old = open_store(tmp_path, "ds").feature("emb")
    np.testing.assert_array_equal(old.get("c0001"), rows(1).astype(np.float16))  # index loaded, one part open
    _shrink(monkeypatch)
    W.finalize_feature(tmp_path / "ds", "emb", W.FeatureSpec.from_dict(L.node_attrs(old.dir)["spec"]).spec_id)
    assert all(n.startswith("m-") for n in _parts(tmp_path))
    values, offsets = old.sequences(ids(0, 250))  # its parts were moved aside, not deleted
    assert offsets[-1] == sum(i % 5 + 1 for i in range(250))
    np.testing.assert_array_equal(values[offsets[200]:offsets[201]], rows(200).astype(np.float16))
    # once the moved parts are swept, a reader opened before that finalize says what happened
    stale = open_store(tmp_path, "ds").feature("emb")
    stale.complete = {**stale.complete, "finalized_ns": 1}
    part = stale._index.filter(pl.col("clip_id") == "c0000")["part"].item()
    os.rename(stale.dir / L.PARTS_DIR / part, stale.dir / L.PARTS_DIR / f"{L.TMP_PREFIX}x")
    with pytest.raises(StoreError, match="is gone: the feature was finalized again after this reader opened it"):
        stale.get("c0000")


def test_a_damaged_part_is_left_for_verify(tmp_path, small):
    fw = write_parts(tmp_path, RANGES)
    first = fw.committed_parts()[0]
    shard = first / "values" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0x01
    shard.write_bytes(bytes(data))
    fw.finalize()
    names = _parts(tmp_path)
    assert first.name in names  # its run (four parts) was not merged; the other runs were
    assert sum(n.startswith("m-") for n in names) == 2 and len(names) == 6
    r = open_store(tmp_path, "ds").feature("emb")
    with pytest.raises(CorruptDataError, match=str(shard)):
        r.sequences(ids(0, 250))
    assert "corrupt" in verify(open_store(tmp_path, "ds")).problems[0]


def test_a_crash_between_the_merge_and_moving_the_parts_aside_loses_nothing(tmp_path, small, monkeypatch):
    fw = write_parts(tmp_path, RANGES)
    real = os.rename
    moved: list[str] = []

    def crash_after_three(src, dst):
        if L.RETIRED_PREFIX in str(dst):
            if len(moved) == 3:
                raise OSError("killed")
            moved.append(str(src))
        return real(src, dst)

    monkeypatch.setattr(W.os, "rename", crash_after_three)
    with pytest.raises(OSError, match="killed"):
        fw.finalize()
    monkeypatch.setattr(W.os, "rename", real)
    committed = [p.name for p in fw.committed_parts()]
    assert sum(n.startswith("m-") for n in committed) == 1 and len(committed) == 8  # merged + 7 sources
    fw.finalize()
    check(tmp_path, 250)
    assert len(open_store(tmp_path, "ds").feature("emb").clip_ids) == 250


def test_gc_removes_moved_aside_parts_past_its_bound(tmp_path, small):
    write_parts(tmp_path, RANGES).finalize()
    store = open_store(tmp_path, "ds")
    assert len(_retired(tmp_path)) == 10
    rep = gc(store, older_than_s=3600)
    assert not rep.removed_tmp and len(_retired(tmp_path)) == 10  # just moved: kept for open readers
    rep = gc(store, older_than_s=0)
    assert len(rep.removed_tmp) == 10 and _retired(tmp_path) == []
    check(tmp_path, 250)


def test_compact_command_merges_a_cache_finalized_before(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from clmer_features.cli import cli

    write_parts(tmp_path, RANGES).finalize()  # default thresholds: ten small parts stay
    assert len(_parts(tmp_path)) == 10
    _shrink(monkeypatch)
    r = CliRunner().invoke(cli, ["compact", "--cache", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "ds: emb/" in r.output and "10 part(s) -> 3" in r.output
    check(tmp_path, 250)
