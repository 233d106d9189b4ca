"""OpenFace CSVs without crops: the crops are aligned from the videos by the CSV's landmarks, the way
the faces feature aligns. The CSV is written from the faces feature's own 68 landmarks on a made video,
so the imported crops must match the faces feature's."""
from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from clmer_features import testing as T
from clmer_features import testing_faces as F
from clmer_features.cli import cli
from clmer_features.extractors.faces import crops
from clmer_features.face_detect import DLIB5_OF_68
from clmer_features.interop import InteropError
from clmer_features.interop.openface import import_openface, read_openface_csv
from clmer_features.store import open_store

from _faces_helpers import extract, record

pytest.importorskip("skimage")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLUMNS = ["frame", "face_id", "timestamp", "confidence", "success"] + [f"x_{i}" for i in range(68)] + \
    [f"y_{i}" for i in range(68)]


def write_csv(path, rows):
    """rows: (timestamp, success, confidence, landmarks [68, 2] or None), as OpenFace writes them
    (', '-separated, a gaze column we do not read in the middle)."""
    cols = COLUMNS[:5] + ["gaze_angle_x"] + COLUMNS[5:]
    lines = [", ".join(cols)]
    for f, (t, ok, conf, lm) in enumerate(rows):
        pts = np.zeros((68, 2)) if lm is None else np.asarray(lm).reshape(68, 2)
        vals = [f + 1, 0, f"{t:.3f}", conf, int(ok), 0.1, *[f"{v:.1f}" for v in pts[:, 0]],
                *[f"{v:.1f}" for v in pts[:, 1]]]
        lines.append(", ".join(str(v) for v in vals))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def faces_run(tmp_path_factory):
    """A 1 s pan/zoom video, the faces feature on every frame, and an OpenFace-style CSV made from it."""
    d = tmp_path_factory.mktemp("csv")
    pan = F.make_face_video(d / "pan.mp4", "pan_zoom", seconds=1.0, fps=10)
    store = extract(d, [{"clip_id": "pan", "video": str(pan.path)}], "faces", "faces.frame_interval=0.1",
                    cache="faces")
    r = store.feature("faces")
    rec = record(r, "pan")
    # the 68 points, with the 5 that align (eye corners, nose) set to the ones faces aligned by
    lm68 = []
    for p68, p5 in zip(rec["landmarks68"], rec["landmarks"]):
        p = np.array(p68).reshape(68, 2)
        p[list(DLIB5_OF_68)] = np.array(p5).reshape(5, 2)
        lm68.append(p)
    it = iter(lm68)
    rows = [(t, ok, 0.97, next(it) if ok else None) for t, ok in zip(rec["sampled_times"], rec["face"])]
    assert len(rows) == 10 and all(ok for _, ok, _, _ in rows)
    rows[4] = (rows[4][0], False, 0.0, None)  # OpenFace lost the face in one frame
    return d, pan, r, rec, rows


def test_csv_only_import_aligns_crops_from_the_video_like_the_faces_feature(faces_run, tmp_path):
    d, pan, faces, rec, rows = faces_run
    src = tmp_path / "processed"
    src.mkdir()
    write_csv(src / "pan.csv", rows)  # OpenFace's own -out_dir layout: <video>.csv
    man = T.write_manifest(tmp_path / "clips.csv", [{"clip_id": "pan", "video": str(pan.path)},
                                                     {"clip_id": "gone", "video": str(pan.path)}])
    s = import_openface(src, man, cache_dir=tmp_path / "cache", progress=False)
    assert (s.imported, s.from_videos, s.not_in_source, s.failed) == (1, True, ["gone"], [])
    got = open_store(tmp_path / "cache", "clips").feature("faces")
    assert got.spec.extractor == "import:openface" and got.spec.params["size"] == 112
    assert got.spec.params["padding"] == 0.25 and got.spec.params["box"] == "landmarks"
    g = record(got, "pan")
    keep = [i for i in range(10) if i != 4]
    assert g["face"] == [i != 4 for i in range(10)] and g["sampled_times"] == pytest.approx(rec["sampled_times"])
    assert list(got.times("pan")) == pytest.approx([rec["sampled_times"][i] for i in keep])
    assert (g["width"], g["height"]) == (rec["width"], rec["height"])
    np.testing.assert_allclose(g["boxes"], [rec["boxes"][i] for i in keep], atol=0.051)  # the CSV's 1 decimal
    np.testing.assert_allclose(g["landmarks68"], [rows[i][3].reshape(-1) for i in keep], atol=0.051)
    np.testing.assert_allclose(g["landmarks"], [rec["landmarks"][i] for i in keep])
    # the same frames, aligned by the same 5 points the same way: the same crops
    np.testing.assert_array_equal(crops(got.get("pan"), 112), crops(faces.get("pan"), 112)[keep])
    # a rerun adds nothing; the crops from OpenFace's own arrays would be another spec
    again = import_openface(src, man, cache_dir=tmp_path / "cache", progress=False)
    assert (again.imported, again.already, again.spec_id) == (0, 1, s.spec_id)


def test_csv_landmarks_of_the_68_point_model_give_crops_close_to_the_faces_feature(faces_run, tmp_path):
    _, pan, faces, rec, _ = faces_run
    src = tmp_path / "processed"
    src.mkdir()
    write_csv(src / "pan.csv", [(t, True, 0.9, np.array(p)) for t, p in zip(rec["sampled_times"], rec["landmarks68"])])
    man = T.write_manifest(tmp_path / "clips.csv", [{"clip_id": "pan", "video": str(pan.path)}])
    import_openface(src, man, cache_dir=tmp_path / "cache", progress=False)
    mine = crops(open_store(tmp_path / "cache", "clips").feature("faces").get("pan"), 112).astype(np.float64)
    theirs = crops(faces.get("pan"), 112).astype(np.float64)
    # their 5 aligning points are the 68-point model's, within ~1 px of the 5-point model's (measured:
    # mean |difference| 2-8.5 grey levels per crop, correlation >= 0.97)
    diff = np.abs(mine - theirs).mean(axis=(1, 2, 3))
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(mine, theirs)]
    assert diff.max() < 12 and min(corr) > 0.95, (np.round(diff, 2), np.round(corr, 3))
    assert np.abs(np.array(rec["landmarks"]).reshape(-1, 5, 2)
                  - np.array(rec["landmarks68"]).reshape(-1, 68, 2)[:, list(DLIB5_OF_68)]).max() <= 2


def test_csv_only_import_records_absent_clips_and_broken_videos_and_goes_on(faces_run, tmp_path):
    d, pan, _, _, rows = faces_run
    src = tmp_path / "of"
    for cid in ("pan", "nobody", "short"):
        (src / cid).mkdir(parents=True)  # MERTools' folder layout, without the .npy
    write_csv(src / "pan" / "pan.csv", rows)
    write_csv(src / "nobody" / "nobody.csv", [(0.0, False, 0.0, None), (0.1, False, 0.0, None)])
    write_csv(src / "short" / "short.csv", [(t + 5.0, ok, c, lm) for t, ok, c, lm in rows])  # past the end
    man = T.write_manifest(tmp_path / "clips.csv", [{"clip_id": c, "video": str(pan.path)}
                                                    for c in ("pan", "nobody", "short")])
    r = CliRunner().invoke(cli, ["import", "openface", str(src), "-m", str(man), "--cache", str(tmp_path / "c"),
                                 "--size", "64"])
    assert r.exit_code == 0, r.output
    assert "imported 1 clips into faces/" in r.output and "64x64" in r.output
    assert "short:" in r.output and "past the end of the video" in r.output, r.output
    store = open_store(tmp_path / "c", "clips")
    f = store.feature("faces")
    assert f.get("pan").shape == (9, 64 * 64 * 3)
    led = store.ledger()
    assert sorted(led.select("clip_id", "kind").rows()) == [("nobody", "absent"), ("short", "error")]


def _set(i, v):
    return lambda f: f[:i] + [v] + f[i + 1:]


@pytest.mark.parametrize("row,edit,message", [
    (3, _set(18, "abc"), r"pan\.csv: row 3 \(line 4\), column 'x_12': 'abc' is not a number"),
    (2, lambda f: f[:-1], r"pan\.csv: row 2 \(line 3\): 141 fields, the header has 142"),
    (5, _set(4, "2"), r"pan\.csv: row 5 \(line 6\), column 'success': '2' is not 0 or 1"),
    (7, _set(2, "0.050"), r"pan\.csv: row 7, column 'timestamp': 0\.05 does not come after the previous row's 0\.5"),
    (0, _set(3, "conf"), r"pan\.csv: not an OpenFace FeatureExtraction CSV: no column 'confidence'"),
])
def test_a_malformed_csv_is_one_line_naming_file_row_and_column(faces_run, tmp_path, row, edit, message):
    _, pan, _, _, rows = faces_run
    src = tmp_path / "of"
    src.mkdir()
    p = write_csv(src / "pan.csv", rows)
    lines = p.read_text().splitlines()
    lines[row] = ", ".join(edit(lines[row].split(", ")))
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InteropError, match=message):
        read_openface_csv(p)
    man = T.write_manifest(tmp_path / "clips.csv", [{"clip_id": "pan", "video": str(pan.path)}])
    r = CliRunner().invoke(cli, ["import", "openface", str(src), "-m", str(man), "--cache", str(tmp_path / "c")])
    assert isinstance(r.exception, InteropError) and "\n" not in str(r.exception)  # main() prints one line
    assert re.search(message, str(r.exception))
    assert not list((tmp_path / "c").rglob("*.parquet"))  # checked before anything is written


def test_openface_crops_and_csv_only_clips_in_one_source_are_refused(faces_run, tmp_path):
    _, pan, _, _, rows = faces_run
    src = tmp_path / "of"
    (src / "a").mkdir(parents=True)
    np.save(src / "a" / "a.npy", np.zeros((2, 112, 112, 3), np.uint8))
    write_csv(src / "b.csv", rows)
    man = T.write_manifest(tmp_path / "clips.csv", [{"clip_id": c, "video": str(pan.path)} for c in "ab"])
    with pytest.raises(InteropError, match=r"1 clips have OpenFace's aligned faces \(e\.g\. a\) and 1 only a CSV"):
        import_openface(src, man, cache_dir=tmp_path / "cache")
