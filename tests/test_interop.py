"""Feature import/export: round trips keep every value and clip id; imported specs are proper specs."""
from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from clmer_features.cli import cli
from clmer_features.interop import InteropError, decode_name, encode_name, export_features, import_features
from clmer_features.manifest import read_manifest
from clmer_features.store import open_store
from tests._recipes_helpers import touch, write_csv, write_npy_folder

IDS = ["a/b", "50%", ".hidden", "中文_01", "plain", "with space", "vid$x", "empty"]


def _manifest(tmp_path: Path, ids: list[str] = IDS, media: bool = True) -> Path:
    rows = []
    for i, cid in enumerate(ids):
        video = str(touch(tmp_path / "media" / f"c{i}.mp4")) if media else ""
        rows.append([cid, video, f"text {i}", ["x", "y"][i % 2], ["train", "test"][i % 2]])
    return write_csv(tmp_path / "clips.csv", ["clip_id", "video", "text", "label", "split"], rows)


def _seq_feats(ids: list[str], dtype=np.float32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {cid: rng.standard_normal((1 + i % 4, 6)).astype(dtype) for i, cid in enumerate(ids)}
    out["empty"] = np.zeros((0, 6), dtype)  # a clip with no rows survives too
    return out


def _assert_feature(tmp_path: Path, feature: str, want: dict[str, np.ndarray], times: dict | None = None) -> None:
    f = open_store(tmp_path / "cache", "clips").feature(feature)
    assert f.clip_ids == [c for c in IDS if c in want]
    for cid, arr in want.items():
        got = f.get(cid)
        expect = arr.reshape(1, -1) if arr.ndim == 1 else arr
        assert got.dtype == arr.dtype
        assert got.shape == expect.shape or (expect.shape[0] == 0 and got.shape[0] == 0), cid
        assert np.array_equal(got.reshape(expect.shape), expect), cid
        if times is not None and cid in times:
            assert np.array_equal(f.times(cid), times[cid])


def test_name_encoding_round_trips() -> None:
    for cid in IDS + ["%2F", "a\\b", "..", "x%y/z"]:
        name = encode_name(cid)
        assert "/" not in name and not name.startswith(".") and decode_name(name) == cid


@pytest.mark.parametrize("fmt,h5_layout", [("npy", "packed"), ("hdf5", "packed"), ("hdf5", "per-clip"), ("mmsa", "packed")])
@pytest.mark.parametrize("kind", ["sequence", "vector"])
def test_round_trip_preserves_values_and_ids(tmp_path: Path, fmt: str, h5_layout: str, kind: str) -> None:
    man = _manifest(tmp_path)
    feats = _seq_feats(IDS)
    if kind == "vector":
        feats = {c: (a[0] if len(a) else np.zeros(6, np.float32)) + i for i, (c, a) in enumerate(feats.items())}
    write_npy_folder(tmp_path / "src", feats)
    s1 = import_features("npy", tmp_path / "src", man, "feat", cache_dir=tmp_path / "cache", progress=False)
    assert s1.imported == len(IDS) and s1.layout == kind and s1.dtype == "float32" and not s1.unmatched
    _assert_feature(tmp_path, "feat", feats)

    out = tmp_path / f"out.{fmt}"
    e = export_features("feat", fmt, out, dataset="clips", cache_dir=tmp_path / "cache", h5_layout=h5_layout, progress=False)
    assert e.clips == len(IDS)
    s2 = import_features(fmt, out, man, "back", cache_dir=tmp_path / "cache", key="feat" if fmt == "mmsa" else None,
                         allow_pickle=True, progress=False)
    assert s2.imported == len(IDS) and s2.layout == kind and not s2.unmatched and not s2.loose
    _assert_feature(tmp_path, "back", feats)
    spec = open_store(tmp_path / "cache", "clips").feature("back").spec
    assert spec.extractor == f"import:{fmt}" and spec.params["layout"] == kind


@pytest.mark.parametrize("fmt", ["npy", "hdf5"])
def test_round_trip_keeps_times_and_float16(tmp_path: Path, fmt: str) -> None:
    man = _manifest(tmp_path)
    feats = _seq_feats(IDS, dtype=np.float16, seed=3)
    times = {c: (np.arange(len(a), dtype=np.float32) * 2.0 + 0.5) for c, a in feats.items()}
    src = write_npy_folder(tmp_path / "src", feats)
    (src / "times").mkdir()
    for c, t in times.items():
        np.save(src / "times" / f"{encode_name(c)}.npy", t)
    s = import_features("npy", src, man, "f16", cache_dir=tmp_path / "cache", progress=False)
    assert s.dtype == "float16"
    _assert_feature(tmp_path, "f16", feats, times)
    export_features("f16", fmt, tmp_path / "out", dataset="clips", cache_dir=tmp_path / "cache", progress=False)
    import_features(fmt, tmp_path / "out", man, "again", cache_dir=tmp_path / "cache", progress=False)
    _assert_feature(tmp_path, "again", feats, times)


def test_spec_is_content_addressed_and_source_in_provenance(tmp_path: Path) -> None:
    man = _manifest(tmp_path)
    feats = _seq_feats(IDS)
    write_npy_folder(tmp_path / "one", feats)
    write_npy_folder(tmp_path / "two", feats)  # same content, other name
    a = import_features("npy", tmp_path / "one", man, "f", cache_dir=tmp_path / "cache", progress=False)
    b = import_features("npy", tmp_path / "two", man, "f", cache_dir=tmp_path / "cache", progress=False)
    assert a.spec_id == b.spec_id and b.imported == 0 and b.already == len(IDS)
    reader = open_store(tmp_path / "cache", "clips").feature("f")
    assert "one" not in reader.spec.canonical_json() and "two" not in reader.spec.canonical_json()
    assert reader.provenance["import"]["source_name"] == "two" and reader.provenance["import"]["format"] == "npy"
    feats["plain"] = feats["plain"] + 1.0
    write_npy_folder(tmp_path / "one", feats)
    c = import_features("npy", tmp_path / "one", man, "f", cache_dir=tmp_path / "cache", progress=False)
    assert c.spec_id != a.spec_id and c.other_specs == [a.spec_id]  # changed numbers, new spec
    assert "gc --superseded" in c.text()


def test_foreign_hdf5_packed_and_per_clip(tmp_path: Path) -> None:
    man = _manifest(tmp_path, ids=["c1", "c2", "c3"])
    vals = np.arange(7 * 4, dtype=np.float32).reshape(7, 4)
    with h5py.File(tmp_path / "packed.h5", "w") as f:
        g = f.create_group("openface")
        g.create_dataset("clip_ids", data=np.array(["c1", "c2", "c3", "stranger"], dtype=object), dtype=h5py.string_dtype())
        g.create_dataset("values", data=vals)
        g.create_dataset("offsets", data=np.array([0, 2, 5, 6, 7]))
    with pytest.raises(InteropError, match=r"packed.h5: no group 'opnface' \(top level: openface\)"):
        import_features("hdf5", tmp_path / "packed.h5", man, "of", cache_dir=tmp_path / "cache", key="opnface",
                        progress=False)
    s = import_features("hdf5", tmp_path / "packed.h5", man, "of", cache_dir=tmp_path / "cache", key="openface", progress=False)
    assert s.imported == 3 and s.unmatched == ["stranger"]
    f = open_store(tmp_path / "cache", "clips").feature("of")
    assert np.array_equal(f.get("c2"), vals[2:5]) and f.spec.params["key"] == "openface"
    with h5py.File(tmp_path / "perclip.h5", "w") as h:
        h.create_dataset("c1", data=np.ones(5, np.float64))
        h.create_dataset("c3", data=np.full(5, 2.0))
    s = import_features("hdf5", tmp_path / "perclip.h5", man, "pc", cache_dir=tmp_path / "cache", progress=False)
    assert s.layout == "vector" and s.dtype == "float64" and s.not_in_source == 1
    f = open_store(tmp_path / "cache", "clips").feature("pc")
    assert f.clip_ids == ["c1", "c3"] and f.pooled(["c3"]).tolist() == [[2.0] * 5]


def test_mmsa_pickle_needs_allow_and_maps_ids(tmp_path: Path) -> None:
    man = _manifest(tmp_path, ids=["video_0001_0001", "video_0001_0002", "video_0002_0001"])
    audio = np.zeros((3, 5, 4), np.float32)
    audio[0, :2], audio[1, :5], audio[2, :1] = 1.0, 2.0, 3.0
    data = {
        "train": {"id": ["video_0001$_$0001", "video_0001$_$0002"], "audio": audio[:2], "audio_lengths": [2, 5],
                  "vision": np.ones((2, 5, 3), np.float32), "text_bert": np.zeros((2, 3, 5))},
        "test": {"id": ["video_0002$_$1"], "audio": audio[2:], "audio_lengths": [1],
                 "vision": np.ones((1, 5, 3), np.float32), "text_bert": np.zeros((1, 3, 5))},
    }
    path = tmp_path / "unaligned.pkl"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(InteropError, match="allow-pickle"):
        import_features("mmsa", path, man, "cov", cache_dir=tmp_path / "cache", key="audio", progress=False)
    with pytest.raises(InteropError, match="token ids"):
        import_features("mmsa", path, man, "cov", cache_dir=tmp_path / "cache", key="text_bert", allow_pickle=True)
    s = import_features("mmsa", path, man, "cov", cache_dir=tmp_path / "cache", key="audio", allow_pickle=True, progress=False)
    assert s.imported == 3 and s.loose == [("video_0002$_$1", "video_0002_0001")]  # "$_$" alone is not a mismatch
    f = open_store(tmp_path / "cache", "clips").feature("cov")
    assert [len(f.get(c)) for c in f.clip_ids] == [2, 5, 1]
    assert f.get("video_0002_0001").tolist() == [[3.0] * 4]


def test_errors_and_non_finite_values(tmp_path: Path) -> None:
    man = _manifest(tmp_path, ids=["c1", "c2", "c3"])
    src = write_npy_folder(tmp_path / "src", {"c1": np.ones((2, 3)), "c2": np.array([[np.nan, 0, 0]]),
                                               "c3": np.ones((1, 3))})
    s = import_features("npy", src, man, "n", cache_dir=tmp_path / "cache", progress=False)
    assert s.imported == 2 and s.failed == 1
    f = open_store(tmp_path / "cache", "clips").feature("n")
    assert f.failures()["clip_id"].to_list() == ["c2"]
    write_npy_folder(tmp_path / "bad", {"c1": np.ones((2, 3)), "c2": np.ones((2, 4))})
    with pytest.raises(InteropError, match="different widths"):
        import_features("npy", tmp_path / "bad", man, "w", cache_dir=tmp_path / "cache")
    write_npy_folder(tmp_path / "cube", {"c1": np.ones((2, 3, 4))})
    with pytest.raises(InteropError, match=r"expected \[T, D\] or \[D\]"):
        import_features("npy", tmp_path / "cube", man, "w", cache_dir=tmp_path / "cache")
    with pytest.raises(InteropError, match="exists"):
        export_features("n", "npy", src, dataset="clips", cache_dir=tmp_path / "cache")


def test_text_only_manifest_uses_text_keys(tmp_path: Path) -> None:
    man = _manifest(tmp_path, ids=["c1", "c2"], media=False)
    write_npy_folder(tmp_path / "src", {"c1": np.ones(3, np.float32), "c2": np.zeros(3, np.float32)})
    import_features("npy", tmp_path / "src", man, "t", cache_dir=tmp_path / "cache", progress=False)
    f = open_store(tmp_path / "cache", "clips").feature("t")
    assert f.input == "text" and f.clip_ids == ["c1", "c2"]
    m = read_manifest(man)
    assert zarr.open_group(f.dir, mode="r").attrs["input"] == "text" and len(m) == 2


def test_cli_import_export(tmp_path: Path) -> None:
    man = _manifest(tmp_path)
    feats = _seq_feats(IDS)
    write_npy_folder(tmp_path / "src", feats)
    cache = str(tmp_path / "cache")
    r = CliRunner().invoke(cli, ["import", "npy", str(tmp_path / "src"), "-m", str(man), "-f", "ext", "--cache", cache])
    assert r.exit_code == 0, r.output
    assert f"imported {len(IDS)} clips into ext/" in r.output
    r = CliRunner().invoke(cli, ["export", "ext", "--format", "hdf5", "-o", str(tmp_path / "x.h5"), "--dataset", "clips",
                                 "--cache", cache])
    assert r.exit_code == 0, r.output
    assert "clip/s" not in r.output and "export ext:" not in r.output  # not a terminal: no progress bar
    r2 = CliRunner().invoke(cli, ["export", "ext", "--format", "npy", "-o", str(tmp_path / "npy"), "--dataset", "clips",
                                  "--cache", cache, "--no-progress"])
    assert r2.exit_code == 0, r2.output
    r2 = CliRunner().invoke(cli, ["verify", "--cache", cache])
    assert r2.exit_code == 0 and "verify ext" not in r2.output, r2.output
    with h5py.File(tmp_path / "x.h5") as h:
        assert h["clip_ids"].asstr()[()].tolist() == IDS
        assert h["offsets"][-1] == sum(len(a) for a in feats.values())
    r = CliRunner().invoke(cli, ["import", "mmsa", str(tmp_path / "x.h5"), "-m", str(man), "-f", "p", "--cache", cache,
                                 "--key", "audio"])
    assert r.exit_code != 0 and "allow-pickle" in str(r.exception)


def test_blocked_hdf5_paths_and_partial_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small blocks force the streaming export and the blocked import through many flushes/reads."""
    from clmer_features.interop import exporter, formats

    monkeypatch.setattr(exporter, "FLUSH_ROWS", 3)
    monkeypatch.setattr(formats._BlockReader, "BLOCK_ROWS", 2)
    man = _manifest(tmp_path)
    feats = _seq_feats(IDS, seed=5)
    src = write_npy_folder(tmp_path / "src", feats)
    (src / "times").mkdir()
    timed = {c: np.linspace(0, 1, len(a), dtype=np.float32) for c, a in list(feats.items())[4:]}  # later clips only
    for c, t in timed.items():
        np.save(src / "times" / f"{encode_name(c)}.npy", t)
    import_features("npy", src, man, "f", cache_dir=tmp_path / "cache", progress=False)
    export_features("f", "hdf5", tmp_path / "o.h5", dataset="clips", cache_dir=tmp_path / "cache", progress=False)
    with h5py.File(tmp_path / "o.h5") as h:
        assert h["times"].shape[0] == h["values"].shape[0] == sum(len(a) for a in feats.values())
    import_features("hdf5", tmp_path / "o.h5", man, "g", cache_dir=tmp_path / "cache", progress=False)
    _assert_feature(tmp_path, "g", feats, timed)
    f = open_store(tmp_path / "cache", "clips").feature("g")
    assert np.isnan(f.times("a/b")).all()  # clips without timestamps stay without


def test_nested_sources_match_by_file_name(tmp_path: Path) -> None:
    man = _manifest(tmp_path, ids=["c1", "c2", "c3"])
    for split, cid in (("train", "c1"), ("train", "c2"), ("test", "c3")):
        (tmp_path / "nested" / split).mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "nested" / split / f"{cid}.npy", np.full((2, 3), float(cid[1])))
    s = import_features("npy", tmp_path / "nested", man, "n", cache_dir=tmp_path / "cache", progress=False)
    assert s.imported == 3 and ("test/c3", "c3") in s.loose and not s.unmatched
    with h5py.File(tmp_path / "nested.h5", "w") as h:
        h.create_dataset("train/c1", data=np.ones(4))
        h.create_dataset("test/c3", data=np.zeros(4))
    s = import_features("hdf5", tmp_path / "nested.h5", man, "h", cache_dir=tmp_path / "cache", progress=False)
    f = open_store(tmp_path / "cache", "clips").feature("h")
    assert s.imported == 2 and f.clip_ids == ["c1", "c3"] and f.get("c3").tolist() == [[0.0] * 4]


def test_id_matching_rules() -> None:
    from clmer_features.interop.importer import _match_ids

    mapping, loose, unmatched = _match_ids(
        ["v$_$1", "A01", "x/7", "k1", "K1"], ["v_1", "A1", "a001", "7", "k1"])
    assert mapping == {"v$_$1": "v_1", "x/7": "7", "k1": "k1"}
    assert loose == [("x/7", "7")]  # the MMSA form is exact, not loose
    assert unmatched == ["A01", "K1"]  # A01 is ambiguous (A1, a001); K1's loose target k1 is matched exactly
