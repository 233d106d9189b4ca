import os
import subprocess
import sys

import numpy as np
from click.testing import CliRunner

from clmer_features.cli import cli
from clmer_features.manifest import read_manifest
from clmer_features.spec import FeatureSpec
from clmer_features.store import open_store


def make_store(tmp_path):
    (tmp_path / "m").mkdir()
    lines = ["clip_id,video,label,language,split"]
    for i in range(4):
        (tmp_path / "m" / f"c{i}.mp4").write_bytes(os.urandom(100))
        lines.append(f"c{i},m/c{i}.mp4,{'ab'[i % 2]},en,train")
    path = tmp_path / "demo.csv"
    path.write_text("\n".join(lines) + "\n")
    m = read_manifest(path)
    store = open_store(tmp_path / "cache", "demo", create=True)
    store.write_clips(m)
    fw = store.feature_writer(FeatureSpec.create("siglip", model_id="m"))
    keys = m.keys("media")
    with fw.part("p1") as p:
        for i in range(3):
            p.add(keys[i], f"c{i}", np.ones((2, 4)) * i)
    fw.finalize()
    return path, fw


def test_manifest_check_summary_and_errors(tmp_path):
    path, _ = make_store(tmp_path)
    res = CliRunner().invoke(cli, ["manifest", "check", str(path)])
    assert res.exit_code == 0, res.output
    assert "clips      4" in res.output and "labels     a 2, b 2" in res.output and "languages  en 4" in res.output


def test_one_line_error_and_exit_code_from_console_script(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("clip_id,video\nx,missing.mp4\n")
    exe = os.path.join(os.path.dirname(sys.executable), "clmer-features")
    res = subprocess.run([exe, "manifest", "check", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "bad.csv row 1 (line 2), column 'video': file not found: missing.mp4" in res.stderr


def test_manifest_check_counts_missing_files_and_strict_refuses_them(tmp_path):
    from clmer_features import testing as T

    T.make_wav(tmp_path / "a.wav", 0.5)
    T.make_wav(tmp_path / "b.wav", 0.5)
    m = tmp_path / "m.csv"
    m.write_text("clip_id,audio\na,a.wav\nb,b.wav\nc,gone.wav\n")
    res = CliRunner().invoke(cli, ["manifest", "check", str(m)])
    assert res.exit_code == 0, res.output
    assert "missing    1 clip(s) whose media file is not there" in res.output
    assert f"c: file not found: gone.wav (resolved to {tmp_path / 'gone.wav'})" in res.output
    res = CliRunner().invoke(cli, ["manifest", "check", "--strict", str(m)])
    assert res.exit_code != 0 and "m.csv row 3 (line 4), column 'audio': file not found: gone.wav" in str(res.exception)


def test_status_verify_gc(tmp_path):
    path, fw = make_store(tmp_path)
    r = CliRunner()
    res = r.invoke(cli, ["status", str(path), "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if l.strip().startswith("siglip"))
    assert line.split()[2:6] == ["3", "1", "0", "0"] and line.endswith("complete")
    res = r.invoke(cli, ["verify", "--cache", str(tmp_path / "cache")])  # sound, but c3 is not extracted yet
    assert res.exit_code == 3 and "1 clip(s) of the manifest snapshot are not extracted yet" in res.output
    chunk = next(p for p in (fw.committed_parts()[0] / "values").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:-7])
    res = r.invoke(cli, ["verify", "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 4 and "corrupt" in res.output
    (fw.parts_dir / ".tmp-p9-abc").mkdir()
    res = r.invoke(cli, ["gc", "--cache", str(tmp_path / "cache"), "--older-than", "0"])
    assert res.exit_code == 0 and "removed 1 temporary part(s)" in res.output
