"""Vision features on the cached face crops (--param clip.input=faces): decode once, detect once,
encode many; locally and on two Dask workers."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from clmer_features import testing as T
from clmer_features.cli import cli
from clmer_features.extractors.faces import crops
from clmer_features.store import open_store

from _faces_helpers import extract, videos  # noqa: F401  (fixture)

pytest.importorskip("skimage")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from clmer_features import testing_zoo as Z

    root = tmp_path_factory.mktemp("zoo")
    Z.make_tiny_clip(root)
    Z.make_tiny_videomae(root)
    return root


def face_rows(videos):
    return [{"clip_id": "pan", "video": str(videos["pan"].path)}, {"clip_id": "none", "video": str(videos["none"])}]


def test_clip_on_faces_encodes_the_cached_crops_and_names_the_faces_spec(videos, zoo, tmp_path):
    from clmer_features.engine import build_extractors, phases

    store = extract(tmp_path, face_rows(videos), "clip,faces,videomae", "faces.frame_interval=0.25",
                    "clip.input=faces", "videomae.input=faces", extra=("--models-dir", str(zoo)))
    faces, clip, vmae = store.feature("faces"), store.feature("clip"), store.feature("videomae")
    assert clip.spec.params["input"] == "faces" and clip.spec.params["faces"] == faces.spec.spec_id
    assert "frame_interval" not in clip.spec.params
    ext = build_extractors(["clip"], zoo, device="cpu")["clip"]
    assert ext.spec().spec_id != clip.spec.spec_id and "input" not in ext.spec().params  # frames: as before
    assert phases(["clip", "faces"], build_extractors(["clip", "faces"], zoo, device="cpu",
                                                      params={"clip": {"input": "faces"}})) == [["faces"], ["clip"]]
    assert phases(["clip", "faces"]) == [["clip", "faces"]]  # on frames: one phase, frames decoded once

    rows = crops(faces.get("pan"), 112)
    want = ext.embed_frames(list(rows))
    np.testing.assert_allclose(clip.get("pan").astype(np.float32), want, rtol=2e-3, atol=2e-3)
    assert list(clip.times("pan")) == list(faces.times("pan"))
    assert vmae.get("pan").shape[0] == 8  # 16 crops evenly spread over the 8 found, as one clip
    led = store.ledger()
    assert sorted(led.filter(led["clip_id"] == "none").select("feature", "kind").rows()) == [
        ("clip", "absent"), ("faces", "absent"), ("videomae", "absent")]


def test_a_vision_feature_on_faces_without_faces_is_one_clear_error(videos, zoo, tmp_path):
    man = T.write_manifest(tmp_path / "clips.csv", face_rows(videos))
    r = CliRunner().invoke(cli, ["extract", str(man), "-f", "clip", "--param", "clip.input=faces", "--cache",
                                 str(tmp_path / "c"), "--models-dir", str(zoo), "--no-progress"])
    from clmer_features.errors import ClmerError

    assert isinstance(r.exception, ClmerError)  # main() prints it as one line
    assert str(r.exception).startswith("clip.input=faces needs the faces feature: add faces to --features")
    for size in ("112", "64"):  # two faces specs in the store: which one is the user's to say
        extract(tmp_path, face_rows(videos)[:1], "faces", f"faces.size={size}", cache="c")
    r = CliRunner().invoke(cli, ["extract", str(man), "-f", "clip", "--param", "clip.input=faces", "--cache",
                                 str(tmp_path / "c"), "--models-dir", str(zoo), "--no-progress"])
    assert isinstance(r.exception, ClmerError) and "the store holds 2 faces specs" in str(r.exception)


@pytest.mark.slow
def test_faces_and_clip_on_faces_on_two_dask_workers_equal_the_local_run(videos, zoo, tmp_path):
    pytest.importorskip("distributed")
    import subprocess
    import sys

    man = T.write_manifest(tmp_path / "clips.csv", face_rows(videos))
    args = ["extract", str(man), "-f", "faces,clip", "--param", "clip.input=faces", "--param",
            "faces.frame_interval=0.5", "--models-dir", str(zoo), "--device", "cpu", "--no-progress",
            "--partition-size", "1"]
    assert CliRunner().invoke(cli, args + ["--cache", str(tmp_path / "local")]).exit_code == 0
    p = subprocess.run([sys.executable, "-c", "from clmer_features.cli import main; main()", *args,
                        "--cache", str(tmp_path / "dask"), "--workers", "2"], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = open_store(tmp_path / "local", "clips"), open_store(tmp_path / "dask", "clips")
    for name in ("faces", "clip"):
        assert a.feature(name).spec.spec_id == b.feature(name).spec.spec_id
        assert a.feature(name).clip_ids == b.feature(name).clip_ids == ["pan"]
        np.testing.assert_allclose(a.feature(name).get("pan").astype(np.float32),
                                   b.feature(name).get("pan").astype(np.float32), rtol=2e-3, atol=2e-3)
