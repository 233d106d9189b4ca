"""The store protocol from the outside: finalize follows what is on disk, verify tells clean /
unfinished / corrupt apart, `verify --repair` drops damage so that a rerun recomputes exactly it."""
from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from clmer_features import testing as T
from clmer_features.cli import cli
from clmer_features.engine import extract
from clmer_features.errors import StoreError
from clmer_features.store import open_store
from clmer_features.store import layout as L
from clmer_features.store import writer as W
from clmer_features.store.maintenance import verify

from _extract_helpers import media, tiny_models  # noqa: F401  (fixtures)


def text_manifest(path, n: int):
    return T.write_manifest(path, [{"clip_id": f"t{i:02d}", "text": f"sentence number {i} is happy"} for i in range(n)])


def run(manifest, cache, models, **kw):
    return extract(manifest, ["bert"], cache, models_dir=models, device="cpu", partition_size=8,
                   progress=False, **kw)


def bert_values(cache) -> dict[str, np.ndarray]:
    r = open_store(cache, "clips").feature("bert")
    return {c: r.get(c) for c in r.clip_ids}


def spec_dir(cache):
    [s] = open_store(cache, "clips").specs("bert")
    return s.path


def verify_cli(cache, *args):
    return CliRunner().invoke(cli, ["verify", "--cache", str(cache), "--no-progress", *args])


@pytest.fixture(scope="module")
def clean48(tiny_models, tmp_path_factory):
    """A clean run on 48 clips: what every repaired store must equal."""
    d = tmp_path_factory.mktemp("clean")
    m = text_manifest(d / "clips.csv", 48)
    run(m, d / "cache", tiny_models)
    return d / "cache", bert_values(d / "cache")


def assert_equal_values(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_a_rerun_indexes_parts_that_a_crashed_finalize_left_out(tiny_models, tmp_path, monkeypatch, clean48):
    """40 clips done; the manifest grows to 48; the run dies after the new part is committed but
    before the index and COMPLETE.json are rewritten. A plain rerun must show all 48."""
    cache = tmp_path / "cache"
    m = text_manifest(tmp_path / "clips.csv", 40)
    run(m, cache, tiny_models)
    m = text_manifest(tmp_path / "clips.csv", 48)

    def die(*a, **k):
        raise KeyboardInterrupt("killed before finalize")

    monkeypatch.setattr(W, "finalize_feature", die)
    with pytest.raises(KeyboardInterrupt):
        run(m, cache, tiny_models)
    monkeypatch.undo()
    assert len(open_store(cache, "clips").feature("bert")) == 40  # the old index: 8 clips invisible
    assert len(L.committed_parts(spec_dir(cache))) == 6

    s = run(m, cache, tiny_models)
    assert s.features["bert"].skipped == 48 and s.features["bert"].done == 0  # nothing recomputed ...
    assert len(open_store(cache, "clips").feature("bert")) == 48  # ... and yet all 48 are visible
    assert W.stale_reason(spec_dir(cache)) is None
    assert verify_cli(cache).exit_code == 0
    assert_equal_values(bert_values(cache), clean48[1])


def test_parts_left_out_of_the_index_are_unfinished_not_corrupt(tiny_models, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    run(text_manifest(tmp_path / "clips.csv", 16), cache, tiny_models)
    monkeypatch.setattr(W, "finalize_feature", lambda *a, **k: None)  # a run that dies before finalize
    run(text_manifest(tmp_path / "clips.csv", 24), cache, tiny_models)
    monkeypatch.undo()
    assert W.stale_reason(spec_dir(cache)) == "1 committed part(s) not in the index"
    res = verify_cli(cache)
    assert res.exit_code == 3 and "1 committed part(s) not in the index (rerun extract to refinalize)" in res.output
    assert "unfinished: rerun extract to complete it" in res.output


def test_a_rerun_refinalizes_when_index_and_complete_disagree(tiny_models, tmp_path):
    cache = tmp_path / "cache"
    m = text_manifest(tmp_path / "clips.csv", 16)
    run(m, cache, tiny_models)
    idx = spec_dir(cache) / L.INDEX_FILE
    pl.read_parquet(idx).head(3).write_parquet(idx)  # an index rewritten, COMPLETE.json not (a crash)
    res = verify_cli(cache)
    assert res.exit_code == 3 and "does not match COMPLETE.json" in res.output
    run(m, cache, tiny_models)
    assert len(open_store(cache, "clips").feature("bert")) == 16
    assert verify_cli(cache).exit_code == 0


def test_a_deleted_part_is_corrupt_and_reads_name_it(tiny_models, tmp_path, clean48):
    cache = tmp_path / "cache"
    m = text_manifest(tmp_path / "clips.csv", 48)
    run(m, cache, tiny_models)
    parts = L.committed_parts(spec_dir(cache))
    assert len(parts) == 6
    shutil.rmtree(parts[2])

    res = verify_cli(cache)
    assert res.exit_code == 4, res.output
    assert f"index names part {parts[2].name}, which is not on disk" in res.output
    assert "corrupt" in res.output

    r = open_store(cache, "clips").feature("bert")
    victim = r._index.filter(pl.col("part") == parts[2].name)["clip_id"][0]
    with pytest.raises(StoreError, match=f"bert/.*: part {parts[2].name} .*is missing from disk.*verify --repair"):
        r.get(victim)
    with pytest.raises(StoreError, match=f"part {parts[2].name}"):
        r.sequences()

    res = verify_cli(cache, "--repair")
    assert res.exit_code == 3, res.output  # repaired into "unfinished": a rerun recomputes the clips
    assert len(open_store(cache, "clips").feature("bert")) == 40
    s = run(m, cache, tiny_models)
    assert s.features["bert"].done == 8 and s.features["bert"].skipped == 40
    assert verify_cli(cache).exit_code == 0
    assert_equal_values(bert_values(cache), clean48[1])


def test_a_truncated_shard_is_dropped_by_repair_and_exactly_its_clips_recomputed(tiny_models, tmp_path, clean48):
    cache = tmp_path / "cache"
    m = text_manifest(tmp_path / "clips.csv", 48)
    run(m, cache, tiny_models)
    part = L.committed_parts(spec_dir(cache))[4]
    shard = part / "values" / "c" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:-100])
    s = run(m, cache, tiny_models)
    assert s.features["bert"].done == 0  # a plain rerun trusts committed parts: verify finds it
    rep = verify(open_store(cache, "clips"))
    assert rep.state == "corrupt" and rep.damaged_parts == [part]

    res = verify_cli(cache, "--repair")
    assert res.exit_code == 3 and f"dropped part {part.name}" in res.output, res.output
    assert not part.exists()
    s = run(m, cache, tiny_models)
    assert s.features["bert"].done == 8 and s.features["bert"].skipped == 40
    assert verify_cli(cache).exit_code == 0
    assert_equal_values(bert_values(cache), clean48[1])


def test_an_index_row_range_outside_its_part_is_corrupt(tiny_models, tmp_path):
    cache = tmp_path / "cache"
    run(text_manifest(tmp_path / "clips.csv", 16), cache, tiny_models)
    sdir = spec_dir(cache)
    idx = pl.read_parquet(sdir / L.INDEX_FILE).with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.col("row_end") + 1000).otherwise(pl.col("row_end")).alias("row_end"))
    L.atomic_write_parquet(sdir / L.INDEX_FILE, idx)
    complete = L.read_json(sdir / L.COMPLETE_FILE)
    L.atomic_write_json(sdir / L.COMPLETE_FILE, {**complete, "index_sha256": L.sha256_file(sdir / L.INDEX_FILE)})
    res = verify_cli(cache)
    assert res.exit_code == 4 and "outside part" in res.output, res.output


def test_verify_help_documents_the_exit_codes():
    res = CliRunner().invoke(cli, ["verify", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    for code in ("0 clean", "3 unfinished", "4 corrupt"):
        assert code in text, text


def test_gc_superseded_keeps_the_default_or_named_spec_and_lists_before_deleting(tmp_path):
    from clmer_features.spec import FeatureSpec

    store = open_store(tmp_path / "cache", "ds", create=True)
    made = {}
    for interval in (2.0, 1.0, 0.5):  # finalized in this order: the default (2.0) is the oldest
        spec = FeatureSpec.create("siglip", model_id="google/siglip-base-patch16-224", weights_digest="d",
                                  params={"frame_interval": interval, "output": "pooler_output"})
        fw = store.feature_writer(spec)
        with fw.part("p1") as p:
            p.add("k", "c", np.ones((1, 4)))
        fw.finalize()
        made[interval] = spec.spec_id
    gc_cli = ["gc", "--cache", str(tmp_path / "cache"), "--superseded"]
    res = CliRunner().invoke(cli, gc_cli)
    assert res.exit_code == 0, res.output
    for interval in (1.0, 0.5):
        assert f"would remove spec siglip/{made[interval]}; keeping siglip/{made[2.0]} (default parameters)" in res.output
    assert "run again with --yes" in res.output and len(store.specs("siglip")) == 3  # nothing deleted yet

    res = CliRunner().invoke(cli, gc_cli + ["--keep", f"siglip={made[0.5]}", "--yes"])
    assert res.exit_code == 0, res.output
    assert f"removed spec siglip/{made[2.0]}; keeping siglip/{made[0.5]} (named with --keep)" in res.output
    assert [s.spec_id for s in store.specs("siglip")] == [made[0.5]]
    res = CliRunner().invoke(cli, gc_cli + ["--keep", "siglip=nope"])
    assert res.exit_code != 0 and "no such spec" in str(res.exception)


def test_status_agrees_with_extract_on_absent_clips_and_names_the_spec(tiny_models, media, tmp_path):
    rows = [{"clip_id": "v0", "video": str(media["av"]), "text": "hello happy day"},
            {"clip_id": "broken", "video": str(media["truncated"])},
            {"clip_id": "t0", "text": "only words here"}]
    m = T.write_manifest(tmp_path / "clips.csv", rows)
    s = extract(m, ["siglip"], tmp_path / "cache", models_dir=tiny_models, device="cpu", progress=False)
    st = s.features["siglip"]
    assert (st.done, st.failed, st.absent) == (1, 1, 1)
    res = CliRunner().invoke(cli, ["status", str(m), "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if l.strip().startswith("siglip"))
    assert line.split()[2:6] == ["1", "0", "1", "1"], line  # done missing failed absent: as extract said
    [fail] = [l for l in res.output.splitlines() if "failed:" in l]
    assert fail.strip().startswith(f"failed: siglip/{st.spec_id} broken: decode:")
