"""Every read checks what it touched: a flipped bit or a truncated file in a part is one
clear error naming the file and the feature, in the library and in `clmer-fusion train`."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from clmer_features.store import CorruptDataError, open_store
from clmer_features.store import layout as L

sys.path.insert(0, str(Path(__file__).parent))
from test_store_format import FORMAT1, SPEC, rows_for, write_store  # noqa: E402


def flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x10
    path.write_bytes(bytes(data))


def shard(part: Path) -> Path:
    return part / "values" / "c" / "0" / "0"


def first_row_of(part: Path, clip: str, dim: int = 8) -> int:
    return pl.read_parquet(part / L.INDEX_FILE).filter(pl.col("clip_id") == clip)["row_start"][0] * dim * 2


def test_a_flipped_value_is_caught_by_whole_part_and_single_clip_reads(tmp_path):
    store, fw = write_store(tmp_path / "cache")
    part = fw.parts_dir / pl.read_parquet(fw.dir / L.INDEX_FILE).filter(pl.col("clip_id") == "c2")["part"][0]
    flip(shard(part), first_row_of(part, "c2") + 3)
    r = store.feature("siglip")
    for read in (lambda: r.sequences(), lambda: r.get("c2"), lambda: r.get_many(["c0", "c2"]), lambda: r.pooled()):
        with pytest.raises(CorruptDataError) as ei:
            read()
        msg = str(ei.value)
        assert msg.startswith(f"{shard(part)}: corrupt data") and f"feature siglip/{SPEC.spec_id}" in msg and "\n" not in msg
    assert "clip 'c2'" in str(pytest.raises(CorruptDataError, r.get, "c2").value)
    # the other clips of the damaged part, read alone, are checked and fine
    np.testing.assert_array_equal(r.get("c1"), rows_for(1).astype(np.float16))
    np.testing.assert_array_equal(r.get_many(["c9", "c0"])[1], rows_for(0).astype(np.float16))


def test_verify_finds_a_flipped_value_and_a_checksum_that_is_not_the_parts(tmp_path):
    from clmer_features.store.maintenance import CORRUPT, EXIT_CODES, verify

    store, fw = write_store(tmp_path / "cache")
    assert verify(store).ok
    part = fw.parts_dir / pl.read_parquet(fw.dir / L.INDEX_FILE).filter(pl.col("clip_id") == "c2")["part"][0]
    pos = first_row_of(part, "c2") + 3
    flip(shard(part), pos)
    rep = verify(store)
    assert rep.state == CORRUPT and EXIT_CODES[rep.state] == 4 and rep.damaged_parts == [part]
    assert rep.corrupt == [f"siglip/{SPEC.spec_id}: part {part.name}: values/c/0/0 is corrupt (checksum mismatch, "
                           f"{shard(part).stat().st_size} bytes)"]
    flip(shard(part), pos)
    # the spec's index gives c2 a checksum that is not its part's: readers would refuse c2
    index = pl.read_parquet(fw.dir / L.INDEX_FILE)
    index.with_columns(pl.when(pl.col("clip_id") == "c2").then(pl.lit(7, pl.UInt64)).otherwise(pl.col(L.DIGEST)).alias(L.DIGEST)).write_parquet(fw.dir / L.INDEX_FILE)
    with pytest.raises(CorruptDataError, match="clip 'c2'"):
        open_store(tmp_path / "cache", "ds").feature("siglip").get("c2")
    rep = verify(store)
    assert rep.state == CORRUPT and any(f"for part {part.name} do not match the part's own index (first: k2)" in c for c in rep.corrupt)


def test_a_truncated_shard_names_the_file(tmp_path):
    store, fw = write_store(tmp_path / "cache")
    path = shard(fw.committed_parts()[0])
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptDataError, match=rf"^{path}: corrupt data \(truncated .*feature siglip/{SPEC.spec_id}"):
        store.feature("siglip").sequences()
    # a damaged shard index (its crc32c) as well
    store, fw = write_store(tmp_path / "cache2")
    path = shard(fw.committed_parts()[0])
    flip(path, path.stat().st_size - 10)
    with pytest.raises(CorruptDataError, match="damaged: the shard index does not match its checksum"):
        store.feature("siglip").get("c0")


@pytest.mark.parametrize("array", ["times", "pooled"])
def test_flipped_times_and_pooled_are_caught(tmp_path, array):
    store, fw = write_store(tmp_path / "cache")
    part = fw.committed_parts()[0]
    chunk = next(p for p in (part / array / "c").rglob("*") if p.is_file())
    flip(chunk, 5)
    r = store.feature("siglip")
    read = (lambda: r.times_many(r.clip_ids)) if array == "times" else (lambda: r.pooled(how="model"))
    with pytest.raises(CorruptDataError, match=rf"{part / array}.*crc32c check failed.*feature siglip"):
        read()


def test_format1_parts_are_checked_whole_against_their_part_json(tmp_path):
    shutil.copytree(FORMAT1 / "ds", tmp_path / "cache" / "ds")
    store = open_store(tmp_path / "cache", "ds")
    parts = L.committed_parts(store.root / "features" / "siglip" / SPEC.spec_id)
    r = store.feature("siglip")
    np.testing.assert_array_equal(r.get("c0"), rows_for(0).astype(np.float16))  # intact: reads
    flip(shard(parts[1]), 20)
    r = open_store(tmp_path / "cache", "ds").feature("siglip")
    with pytest.raises(CorruptDataError, match=rf"^{shard(parts[1])}: corrupt data \(the file does not match the CRC-32"):
        r.sequences()
    times = next(p for p in (parts[0] / "times" / "c").rglob("*") if p.is_file())
    flip(times, 2)
    r = open_store(tmp_path / "cache", "ds").feature("siglip")
    with pytest.raises(CorruptDataError, match=rf"^{times}: corrupt data"):
        r.times(r.clip_ids[0])


@pytest.fixture(scope="module")
def fusion_store(tmp_path_factory):
    from _fusion_helpers import write_synthetic_store

    return write_synthetic_store(tmp_path_factory.mktemp("integrity"), n=60)


def test_train_refuses_a_flipped_byte_in_any_values_shard(fusion_store, tmp_path):
    from clmer_fusion.cli import cli

    manifest, cache, _ = fusion_store
    shards = sorted(cache.rglob("values/c/0/0"))
    assert len(shards) == 3
    args = ["train", str(manifest), "--cache", str(cache), "--features", "bert,wav,vis", "--head", "linear", "--out", str(tmp_path / "run")]
    for path in shards:
        original = path.read_bytes()
        flip(path, len(original) // 4)  # inside the rows (the shard ends with padding and its index)
        try:
            r = CliRunner().invoke(cli, args)
            assert isinstance(r.exception, CorruptDataError), r.output
            assert str(r.exception).startswith(f"{path}: corrupt data")
        finally:
            path.write_bytes(original)
    # the real command line: exit code 2 and one line naming the file
    flip(shards[0], 100)
    res = subprocess.run([sys.executable, "-c", "from clmer_fusion.cli import main; main()", *args], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and res.stderr.startswith(f"error: {shards[0]}: corrupt data")


@pytest.mark.parametrize("threads", [1, 2])
def test_scans_read_ahead_and_still_check_every_byte(tmp_path, monkeypatch, threads):
    """A scan (runs of 4 MiB and more) reads its runs in threads, or with one thread asks the
    kernel for the next run while it reads this one; either way every byte is checked."""
    import threading

    import clmer_features.store.reader as R

    store, fw = write_store(tmp_path / "cache", parts=((0, 3), (3, 6), (6, 10)))
    monkeypatch.setattr(R, "_PREFETCH", 0)  # every run counts as a scan
    monkeypatch.setattr(R, "_SCAN_THREADS", threads)
    calls, readers = [], set()
    will_need, read_run = R.RawRows.will_need, R.FeatureReader._read_run
    monkeypatch.setattr(R.RawRows, "will_need", lambda self, a, b: (calls.append((a, b)), will_need(self, a, b))[1])
    monkeypatch.setattr(R.FeatureReader, "_read_run", lambda self, *a: (readers.add(threading.get_ident()), read_run(self, *a))[1])
    r = store.feature("siglip")
    values, offsets = r.sequences()
    assert len(calls) == (2 if threads == 1 else 0)
    assert (threading.get_ident() in readers) == (threads == 1)
    for k, cid in enumerate(r.clip_ids):
        np.testing.assert_array_equal(values[offsets[k] : offsets[k + 1]], rows_for(int(cid[1:])).astype(np.float16))
    part = fw.parts_dir / pl.read_parquet(fw.dir / L.INDEX_FILE).filter(pl.col("clip_id") == "c7")["part"][0]
    flip(shard(part), first_row_of(part, "c7") + 1)
    with pytest.raises(CorruptDataError, match="clip 'c7'"):
        open_store(tmp_path / "cache", "ds").feature("siglip").sequences()
