"""Shared by the faces tests: the face videos (made once per module) and a CLI extract."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from clmer_features import testing as T
from clmer_features import testing_faces as F
from clmer_features.cli import cli
from clmer_features.store import open_store


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("faces")
    return {
        "pan": F.make_face_video(d / "pan.mp4", "pan_zoom", seconds=2.0, fps=10),
        "two": F.make_face_video(d / "two.mp4", "two_faces", seconds=2.0, fps=5),
        "leaves": F.make_face_video(d / "leaves.mp4", "leaves", seconds=1.0, fps=10),
        "none": T.make_video(d / "none.mp4", seconds=1.0, size=(160, 120), audio=False),
    }


def extract(tmp_path, rows, features, *params, cache="cache", extra=()):
    man = T.write_manifest(tmp_path / "clips.csv", rows)
    args = ["extract", str(man), "-f", features, "--cache", str(tmp_path / cache), "--device", "cpu",
            "--no-progress", "--decode-workers", "0", *extra]
    for p in params:
        args += ["--param", p]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    return open_store(tmp_path / cache, "clips")


def record(reader, clip_id):
    rec = reader.records().filter(reader.records()["clip_id"] == clip_id)
    assert rec.height == 1
    return rec.row(0, named=True)
