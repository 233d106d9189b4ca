import os

import polars as pl
import pytest

from clmer_features.errors import ManifestError
from clmer_features.manifest import MediaFolderError, read_manifest


@pytest.fixture()
def media(tmp_path):
    (tmp_path / "clips").mkdir()
    for name in ("a.mp4", "b.mp4", "c.wav"):
        (tmp_path / "clips" / name).write_bytes(os.urandom(3000))
    return tmp_path


def write_csv(folder, text, name="clips.csv"):
    p = folder / name
    p.write_text(text)
    return p


def test_reads_csv_resolves_paths_and_keeps_extra_columns(media):
    p = write_csv(media, "clip_id,video,audio,label,label_value,split,mood\n"
                         "a,clips/a.mp4,,happy,0.5,train,x\n"
                         "b,clips/b.mp4,,sad,-1,test,y\n"
                         "c,,clips/c.wav,sad,,test,z\n")
    m = read_manifest(p)
    assert m.dataset == "clips"
    assert m.df["video"][0] == str(media / "clips" / "a.mp4")
    assert m.df["audio"][2] == str(media / "clips" / "c.wav")
    assert m.df["label_value"].to_list() == [0.5, -1.0, None]
    assert m.df["mood"].to_list() == ["x", "y", "z"]
    assert all(k.startswith(c + "@") for k, c in zip(m.keys("media"), "abc"))
    s = m.summary()
    assert s["clips"] == 3 and s["labels"] == {"sad": 2, "happy": 1} and s["media_bytes"] == 9000


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_reads_jsonl_and_parquet(media, fmt):
    df = pl.DataFrame({"clip_id": ["a", "b"], "video": ["clips/a.mp4", "clips/b.mp4"], "label": ["x", "y"]})
    p = media / f"m.{fmt}"
    df.write_ndjson(p) if fmt == "jsonl" else df.write_parquet(p)
    m = read_manifest(p, dataset="mine")
    assert m.dataset == "mine" and m.clip_ids == ["a", "b"]


def test_text_only_manifest_is_valid(tmp_path):
    m = read_manifest(write_csv(tmp_path, "clip_id,text,language\nx,hello there,en\ny,你好,zh\n"))
    assert m.keys("media") == [None, None]
    assert all(k is not None for k in m.keys("text"))


def test_every_problem_is_reported_with_file_row_and_column(media):
    p = write_csv(media, "clip_id,video,start,end,label_value\n"
                         "a,clips/a.mp4,0,2,0.1\n"
                         ",clips/b.mp4,0,2,0.2\n"
                         "a,clips/b.mp4,0,2,0.3\n"
                         "d,clips/missing.mp4,0,2,0.4\n"
                         "e,clips/a.mp4,3,2,0.5\n"
                         "f,clips/a.mp4,-1,2,0.6\n"
                         "g,clips/a.mp4,0,2,high\n")
    with pytest.raises(ManifestError) as ei:
        read_manifest(p, strict=True)
    text = str(ei.value)
    probs = ei.value.problems
    assert ei.value.total == 6, text
    assert [int(pr.split()[2]) for pr in probs] == sorted(int(pr.split()[2]) for pr in probs)
    assert "clips.csv row 2 (line 3), column 'clip_id': empty clip_id" in text
    assert "row 3 (line 4), column 'clip_id': duplicate clip_id 'a' (first at row 1 (line 2))" in text
    assert "row 4 (line 5), column 'video': file not found: clips/missing.mp4" in text
    assert "row 5 (line 6), column 'end': start (3.0) >= end (2.0)" in text
    assert "row 6 (line 7), column 'start': negative time -1.0" in text
    assert "row 7 (line 8), column 'label_value': not a number: 'high'" in text
    assert all(pr.startswith("clips.csv row") for pr in probs)


def test_a_missing_file_marks_its_row_and_the_rest_goes_on(media):
    text = ("clip_id,video,start,end\n" "a,clips/a.mp4,0,2\n" "b,clips/b.mp4,0,2\n"
            "c,clips/a.mp4,2,4\n" "d,clips/later.mp4,0,2\n")
    p = write_csv(media, text)
    m = read_manifest(p)
    assert m.missing_count() == 1 and m.summary()["missing_media"] == 1
    assert m.df["missing"].to_list()[:3] == [None, None, None]
    assert m.df["missing"][3] == f"file not found: clips/later.mp4 (resolved to {media / 'clips' / 'later.mp4'})"
    before = m.keys("media")
    (media / "clips" / "later.mp4").write_bytes(os.urandom(3000))
    after = read_manifest(p).keys("media")
    assert after[:3] == before[:3] and after[3] != before[3] and before[3].startswith("d@")
    # the other manifest errors stay refusals
    with pytest.raises(ManifestError, match="duplicate clip_id"):
        read_manifest(write_csv(media, text + "a,clips/b.mp4,0,2\n", "dup.csv"))


def test_most_files_missing_is_refused_in_one_line(media):
    p = write_csv(media, "clip_id,video\na,clips/a.mp4\nb,elsewhere/b.mp4\nc,elsewhere/c.mp4\n")
    with pytest.raises(MediaFolderError) as ei:
        read_manifest(p)
    line = str(ei.value)
    assert "\n" not in line
    assert line.startswith(f"{p}: 2 of 3 rows' media files are missing, e.g. clips.csv row 2 (line 3), "
                           "column 'video': file not found: elsewhere/b.mp4")
    assert "relative to another folder" in line
    # half missing is not most: the run goes on
    assert read_manifest(write_csv(media, "clip_id,video\na,clips/a.mp4\nb,elsewhere/b.mp4\n")).missing_count() == 1


def test_symlink_loop_is_named_as_one(media):
    os.symlink("loop2.mp4", media / "clips" / "loop1.mp4")
    os.symlink("loop1.mp4", media / "clips" / "loop2.mp4")
    p = write_csv(media, "clip_id,video\na,clips/a.mp4\nb,clips/b.mp4\nc,clips/loop1.mp4\n")
    assert read_manifest(p).df["missing"][2].startswith("symlink loop: clips/loop1.mp4")
    with pytest.raises(ManifestError, match=r"row 3 \(line 4\), column 'video': symlink loop: clips/loop1.mp4"):
        read_manifest(p, strict=True)


@pytest.mark.parametrize("line, expect", [
    ('{"clip_id": "a", "text": "x", "start": [1, 2]}',
     "m.jsonl row 2 (line 2), column 'start': expected a number, got a list: [1, 2]"),
    ('{"clip_id": ["a"], "text": "x"}',
     "m.jsonl row 2 (line 2), column 'clip_id': expected a string, got a list: [\"a\"]"),
])
def test_jsonl_list_values_name_file_row_and_column(tmp_path, line, expect):
    p = tmp_path / "m.jsonl"
    p.write_text('{"clip_id": "z", "text": "y", "start": 3}\n' + line + "\n")
    with pytest.raises(ManifestError) as ei:
        read_manifest(p)
    assert ei.value.problems == [expect]


def test_problems_are_capped_with_a_count(tmp_path):
    rows = "".join(f"c{i},nope{i}.mp4\n" for i in range(50))
    with pytest.raises(ManifestError) as ei:
        read_manifest(write_csv(tmp_path, "clip_id,video\n" + rows), strict=True)
    assert ei.value.total == 50 and len(ei.value.problems) == 20
    assert "and 30 more" in str(ei.value)


def test_missing_required_columns(tmp_path):
    with pytest.raises(ManifestError, match="missing required column 'clip_id'"):
        read_manifest(write_csv(tmp_path, "id,video\n1,a.mp4\n"))
    with pytest.raises(ManifestError, match="at least one of the columns 'video', 'audio', 'text'"):
        read_manifest(write_csv(tmp_path, "clip_id,label\n1,happy\n"))


def test_unreadable_encoding_names_line(tmp_path):
    p = tmp_path / "cp.csv"
    p.write_bytes(b"clip_id,text\na,fine\nb,it\x92s broken\n")
    with pytest.raises(ManifestError, match=r"cp.csv: line 3, byte 5: not valid UTF-8 \(0x92\)"):
        read_manifest(p)


def test_fingerprint_survives_relabel_but_not_a_changed_file(media):
    p = write_csv(media, "clip_id,video,label\na,clips/a.mp4,happy\nb,clips/b.mp4,sad\n")
    k1 = read_manifest(p).keys("media")
    write_csv(media, "clip_id,video,label,split\na,clips/a.mp4,angry,train\nb,clips/b.mp4,sad,test\n")
    assert read_manifest(p).keys("media") == k1
    (media / "clips" / "a.mp4").write_bytes(os.urandom(3000))
    k2 = read_manifest(p).keys("media")
    assert k2[0] != k1[0] and k2[1] == k1[1]


def test_segment_is_part_of_the_key(media):
    p = write_csv(media, "clip_id,video,start,end\na,clips/a.mp4,0,2\n")
    k1 = read_manifest(p).keys("media")
    write_csv(media, "clip_id,video,start,end\na,clips/a.mp4,0,3\n")
    assert read_manifest(p).keys("media") != k1


def test_large_file_hashes_head_and_tail(media):
    big = media / "clips" / "big.mp4"
    big.write_bytes(b"\0" * (3 << 20))
    p = write_csv(media, "clip_id,video\nbig,clips/big.mp4\n")
    k1 = read_manifest(p).keys("media")
    st = os.stat(big)
    with open(big, "r+b") as f:
        f.seek((3 << 20) - 10)
        f.write(b"x")
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the tail hash can tell
    assert read_manifest(p).keys("media") != k1
