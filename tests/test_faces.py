"""The faces feature on real photographs made into short videos (tiny, a few frames each).

The astronaut's face box was checked by eye on the photograph (clmer_features.testing_faces);
the videos carry it through each frame's pan and zoom."""
from __future__ import annotations

import numpy as np
import pytest

from clmer_features import testing_faces as F
from clmer_features.extractors.faces import crops
from clmer_features.face_detect import FaceDetector, eye_angle, main_track

from _faces_helpers import extract, record, videos  # noqa: F401  (fixture)

pytest.importorskip("skimage")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pan_zoom_finds_the_face_in_every_frame_and_levels_the_eyes(videos, tmp_path):
    pan = videos["pan"]
    store = extract(tmp_path, [{"clip_id": "pan", "video": str(pan.path)}], "faces",
                    "faces.frame_interval=0.1", "faces.size=224")
    r = store.feature("faces")
    rows, times, rec = r.get("pan"), r.times("pan"), record(r, "pan")
    assert rows.dtype == np.uint8 and rows.shape == (20, 224 * 224 * 3)
    assert rec["face"] == [True] * 20 and len(rec["sampled_times"]) == 20
    ious = [F.iou(np.array(b), pan.at("astronaut", t)) for b, t in zip(rec["boxes"], times)]
    print("IoU per frame", np.round(ious, 3))
    # the box around the 68 landmarks (jaw line to eyebrows); dlib's square HOG window gave 0.67-0.86
    assert min(ious) >= 0.7, np.round(ious, 2)
    assert len(rec["landmarks68"][0]) == 136 and len(rec["landmarks"][0]) == 10
    # the photograph's eyes are ~4 degrees off level; in every aligned crop they are level
    assert np.mean([abs(eye_angle(np.array(lm))) for lm in rec["landmarks"]]) > 2.0
    det = FaceDetector()
    for img in crops(rows, 224):
        again = det.detect(img)
        assert len(again) == 1
        assert abs(again[0].eye_angle()) < 2.0, again[0].eye_angle()


def test_two_faces_the_track_stays_on_one_person(videos, tmp_path):
    two = videos["two"]
    area = {k: np.prod(b[:, 2:] - b[:, :2], axis=1) for k, b in two.boxes.items()}
    assert area["hopper"][0] > area["astronaut"][0] and area["astronaut"][-1] > area["hopper"][-1]  # largest changes
    store = extract(tmp_path, [{"clip_id": "two", "video": str(two.path)}], "faces", "faces.frame_interval=0.2")
    r = store.feature("faces")
    rec, times = record(r, "two"), r.times("two")
    assert rec["faces_seen"] == [2] * 10 and rec["face"] == [True] * 10
    person = {k: [F.iou(np.array(b), two.at(k, t)) for b, t in zip(rec["boxes"], times)] for k in two.boxes}
    same = [k for k, v in person.items() if min(v) >= 0.5]
    assert len(same) == 1, {k: np.round(v, 2) for k, v in person.items()}
    # the main person is the one whose faces cover most of the clip: the astronaut here
    assert same == ["astronaut"]


def test_main_track_follows_identity_not_size():
    class FakeFace:
        def __init__(self, x, size, who):
            self.box, self.who = np.array([x, 0, x + size, size], np.float32), who
            self.area = float(size * size)

    calls = []

    def describe(i, f):
        calls.append(i)
        return {"a": np.zeros(4, np.float32), "b": np.ones(4, np.float32)}[f.who]

    # a (left) starts largest, b (right) grows past it; a leaves in frame 2 and comes back elsewhere
    frames = [[FakeFace(0, 10, "a"), FakeFace(50, 6, "b")], [FakeFace(51, 8, "b"), FakeFace(1, 10, "a")],
              [FakeFace(52, 11, "b")], [FakeFace(90, 10, "a")]]
    pick = main_track(frames, describe)
    assert [frames[i][j].who if j is not None else None for i, j in enumerate(pick)] == ["a", "a", None, "a"]
    assert len(calls) == 3  # one descriptor per tracklet (a, b, a again), not one per face
    calls.clear()
    one = [[FakeFace(0, 10, "a")], [FakeFace(1, 10, "a")], [], [FakeFace(2, 10, "a")]]
    assert main_track(one, describe) == [0, 0, None, 0] and len(calls) == 2  # the gap splits the run
    calls.clear()
    assert main_track([[FakeFace(0, 10, "a")], [FakeFace(1, 10, "a")]], describe) == [0, 0] and not calls


def test_frames_without_a_face_are_recorded_and_a_clip_without_any_is_absent(videos, tmp_path):
    store = extract(tmp_path, [{"clip_id": "leaves", "video": str(videos["leaves"].path)},
                               {"clip_id": "none", "video": str(videos["none"])}], "faces",
                    "faces.frame_interval=0.1")
    r = store.feature("faces")
    rec = record(r, "leaves")
    assert rec["face"] == [True] * 5 + [False] * 5
    assert len(r.get("leaves")) == 5 and list(r.times("leaves")) == pytest.approx(rec["sampled_times"][:5])
    assert "none" not in r
    led = store.ledger().filter(store.ledger()["feature"] == "faces")
    assert led.select("clip_id", "kind").rows() == [("none", "absent")]


def test_faces_spec_names_the_detector_weights_and_changes_with_its_parameters():
    from clmer_features import face_detect as FD
    from clmer_features.extractors.faces import FacesExtractor

    a, b = FacesExtractor(), FacesExtractor(size=224)
    assert a.spec().weights_digest and a.spec().params["dtype"] == "uint8"
    assert a.spec().spec_id != b.spec().spec_id
    assert FacesExtractor(frame_interval=1.0).spec().spec_id != a.spec().spec_id
    # the default box is the landmarks': its spec names the 68-point model and its weights
    assert a.spec().params["box"] == "landmarks" and FD.LANDMARKS68_FILE in a.spec().model_id
    old = FacesExtractor(box="detector").spec()
    assert "box" not in old.params and old.weights_digest != a.spec().weights_digest


def test_box_detector_is_the_spec_of_faces_caches_made_before_the_box_parameter():
    import json
    from pathlib import Path

    from clmer_features import face_detect as FD
    from clmer_features.extractors.faces import FacesExtractor

    pinned = json.loads((Path(__file__).parent / "data" / "faces_spec_v1.json").read_text())["cases"]
    assert len(pinned) == 3
    for case in pinned:
        want = {**case["spec"], "params": {**case["spec"]["params"], "dlib": FD.dlib_version()}}
        got = FacesExtractor(box="detector", **case["params"]).spec()
        assert got.to_dict() == want, case["params"]
        if FD.dlib_version() == "20.0.1.post1":  # the version the pins were written with
            assert got.spec_id == case["spec_id"]
        assert FacesExtractor(**case["params"]).spec().spec_id != got.spec_id  # the default box: another cache


def test_the_stored_box_follows_the_box_parameter_and_the_crops_do_not(videos, tmp_path):
    from clmer_features.engine import extract as run
    from clmer_features.extractors.faces import FacesExtractor
    from clmer_features.store import open_store

    pan = videos["pan"]
    rows = [{"clip_id": "pan", "video": str(pan.path)}]
    frames = {}
    for box in ("detector", "landmarks"):
        store = extract(tmp_path, rows, "faces", "faces.frame_interval=0.5", f"faces.box={box}")
        r = store.feature("faces", spec=FacesExtractor(frame_interval=0.5, box=box).spec())
        rec = record(r, "pan")
        frames[box] = (r.get("pan"), np.array(rec["boxes"]), rec)
        if box == "detector":  # a cache made before the parameter: kept when box is not given
            old = FacesExtractor(frame_interval=0.5, box="detector").spec().spec_id
            s = run(tmp_path / "clips.csv", ["faces"], tmp_path / "cache", device="cpu", progress=False,
                    params={"faces": {"frame_interval": 0.5}})
            st = s.features["faces"]
            assert (st.spec_id, st.planned, st.skipped) == (old, 0, 1)
            assert s.notes == [f"faces: kept the spec {old} this cache holds (box=detector, the former default); "
                               f"for the new default pass --param faces.box=landmarks (a new spec, computed from "
                               f"scratch)"]
    assert len(open_store(tmp_path / "cache", "clips").specs("faces")) == 2  # box=landmarks given: a new spec
    (crops_d, boxes_d, rec_d), (crops_l, boxes_l, rec_l) = frames["detector"], frames["landmarks"]
    np.testing.assert_array_equal(crops_d, crops_l)  # aligned by the same 5 landmarks either way
    assert "landmarks68" not in rec_d and rec_d["landmarks"] == rec_l["landmarks"]
    lm = np.array(rec_l["landmarks68"]).reshape(len(boxes_l), 68, 2)
    np.testing.assert_allclose(boxes_l, np.concatenate([lm.min(axis=1), lm.max(axis=1)], axis=1))
    w, h = boxes_d[:, 2] - boxes_d[:, 0], boxes_d[:, 3] - boxes_d[:, 1]
    np.testing.assert_allclose(w, h, atol=1)  # dlib's HOG window is square


def test_a_damaged_weight_file_is_one_clear_error(tmp_path, monkeypatch):
    from clmer_features import face_detect as FD
    from clmer_features.errors import ModelNotFoundError

    real = FD.models_folder()
    for name in (FD.LANDMARKS_FILE, FD.DESCRIPTOR_FILE):
        (tmp_path / name).write_bytes((real / name).read_bytes()[:5000])  # truncated
    monkeypatch.setattr(FD, "models_folder", lambda: tmp_path)
    with pytest.raises(ModelNotFoundError, match="shape_predictor_5_face_landmarks.dat: dlib cannot read it"):
        FD.FaceDetector().load()
    assert FD.weights_digest() != "" and FD.file_digest(tmp_path / FD.LANDMARKS_FILE) != \
        FD.file_digest(real / FD.LANDMARKS_FILE)  # the spec would name other weights
