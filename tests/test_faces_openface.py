"""OpenFace outputs (MERTools' per-video aligned-face arrays + OpenFace CSVs) import as the faces
feature, and vision features read them with input=faces."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from clmer_features import testing as T
from clmer_features.cli import cli
from clmer_features.extractors.faces import crops
from clmer_features.interop import InteropError
from clmer_features.interop.openface import import_openface
from clmer_features.store import open_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def openface_csv(path, success, seed=0):
    """A FeatureExtraction-style table (OpenFace 2 writes ', '-separated headers)."""
    rng = np.random.default_rng(seed)
    cols = ["frame", "face_id", "timestamp", "confidence", "success"] + [f"x_{i}" for i in range(68)] + \
        [f"y_{i}" for i in range(68)]
    lines = [", ".join(cols)]
    for f, ok in enumerate(success):
        lm = rng.uniform(10, 100, 136).round(1) if ok else np.zeros(136)
        vals = [f + 1, 0, round(f * 0.04, 3), 0.98 if ok else 0.0, int(ok), *lm]
        lines.append(", ".join(str(v) for v in vals))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def openface(tmp_path, media):
    root = tmp_path / "openface_face"
    rng = np.random.default_rng(1)
    faces = {"a": rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8),
             "b": rng.integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)}
    for cid, arr in faces.items():
        (root / cid).mkdir(parents=True)
        np.save(root / cid / f"{cid}.npy", arr)
    openface_csv(root / "a" / "a.csv", [1, 1, 0, 1, 1])
    (root / "none").mkdir()
    np.save(root / "none" / "none.npy", np.zeros((0,), np.uint8))
    openface_csv(root / "none" / "none.csv", [0, 0, 0])
    rows = [{"clip_id": c, "video": str(media["av" if c != "b" else "odd"])} for c in ("a", "b", "none", "gone")]
    return root, faces, T.write_manifest(tmp_path / "clips.csv", rows)


from _extract_helpers import media  # noqa: E402,F401  (fixture)


def test_openface_import_keeps_crops_times_landmarks_and_absent_clips(openface, tmp_path):
    root, faces, man = openface
    s = import_openface(root, man, cache_dir=tmp_path / "cache")
    assert (s.imported, s.no_face, s.without_csv, s.not_in_source) == (2, ["none"], ["b"], ["gone"])
    store = open_store(tmp_path / "cache", "clips")
    f = store.feature("faces")
    assert f.spec.extractor == "import:openface" and f.spec.params["size"] == 112
    np.testing.assert_array_equal(crops(f.get("a"), 112), faces["a"][..., ::-1])  # BGR -> RGB
    assert list(f.times("a")) == pytest.approx([0.0, 0.04, 0.12, 0.16])
    rec = f.records().filter(f.records()["clip_id"] == "a").row(0, named=True)
    assert rec["face"] == [True, True, False, True, True] and len(rec["landmarks"][0]) == 136
    assert np.isnan(f.times("b")).all()  # no CSV: no times
    led = store.ledger()
    assert led.filter(led["clip_id"] == "none").select("feature", "kind").rows() == [("faces", "absent")]
    again = import_openface(root, man, cache_dir=tmp_path / "cache")  # a rerun adds nothing
    assert (again.imported, again.already, again.spec_id) == (0, 3, s.spec_id)  # "none" recorded too


def test_openface_csv_that_disagrees_with_the_array_is_refused(openface, tmp_path):
    root, _, man = openface
    openface_csv(root / "a" / "a.csv", [1, 0, 0, 1, 1])  # 3 faces in the table, 4 in the array
    with pytest.raises(InteropError, match=r"a\.csv: 3 frames with success=1 but a\.npy holds 4 faces"):
        import_openface(root, man, cache_dir=tmp_path / "cache")


def test_clip_reads_imported_openface_crops(openface, tmp_path):
    from clmer_features import testing_zoo as Z
    from clmer_features.engine import build_extractors

    root, faces, man = openface
    zoo = tmp_path / "zoo"
    Z.make_tiny_clip(zoo)
    r = CliRunner().invoke(cli, ["import", "openface", str(root), "-m", str(man), "--cache", str(tmp_path / "c")])
    assert r.exit_code == 0 and "imported 2 clips into faces/" in r.output, r.output
    r = CliRunner().invoke(cli, ["extract", str(man), "-f", "clip", "--param", "clip.input=faces", "--cache",
                                 str(tmp_path / "c"), "--models-dir", str(zoo), "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    store = open_store(tmp_path / "c", "clips")
    clip = store.feature("clip")
    assert clip.spec.params["faces"] == store.feature("faces").spec.spec_id
    want = build_extractors(["clip"], zoo, device="cpu")["clip"].embed_frames(list(faces["b"][..., ::-1]))
    np.testing.assert_allclose(clip.get("b").astype(np.float32), want, rtol=2e-3, atol=2e-3)
    assert sorted(clip.clip_ids) == ["a", "b"]
