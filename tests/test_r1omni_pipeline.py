"""R1-Omni end to end: towers -> cache -> tower-free decoding, equal to towers on the fly."""
from __future__ import annotations

import json
import sys

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from _r1omni_helpers import CLIPS, decode_in_process, make_cached_set
from clmer_features.store import open_store
from clmer_fusion.cli import cli
from clmer_fusion.r1omni.decode import R1OmniDecoder
from clmer_fusion.r1omni.load import load_r1omni
from clmer_fusion.r1omni.run import run_r1omni
from clmer_features.testing import OnTheFlyTowers

MAX_NEW = 12
IDS = [c[0] for c in CLIPS]


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    return make_cached_set(tmp_path_factory.mktemp("r1omni"))


@pytest.fixture(scope="module")
def from_cache(cached, tmp_path_factory):
    out = tmp_path_factory.mktemp("r1out")
    summary = run_r1omni(cached.manifest, cached.cache, cached.tiny.model_dir, out_dir=out,
                         batch_size=len(IDS), max_new_tokens=MAX_NEW, progress=False)
    return summary, out


def _tokens(out):
    return {cid: json.loads((out / "clips" / f"{cid}.json").read_text())["tokens"] for cid in IDS}


def test_cache_decoding_equals_towers_on_the_fly(cached, from_cache):
    summary, out = from_cache
    assert summary.decoded == len(IDS) and not summary.no_features
    cache_tokens = _tokens(out)

    # the same clips, decoded from their media now, towers run in this process, no store
    towers = OnTheFlyTowers(cached.tiny.siglip_dir, cached.tiny.whisper_dir)
    clips = [decode_in_process(cached.videos[cid], cid, towers.vision.frame_request()) for cid in IDS]
    vision, audio = towers.features(clips)
    assert vision.shape == (3, 8, 16, 24) and audio.shape == (3, 500, 20)

    # the cached arrays are bit-identical to the on-the-fly tower outputs ...
    store = open_store(cached.cache, "r1demo")
    np.testing.assert_array_equal(np.stack(store.feature("r1omni_vision").get_many(IDS)).reshape(vision.shape), vision)
    np.testing.assert_array_equal(np.stack(store.feature("r1omni_audio").get_many(IDS)), audio)

    # ... and the LLM decodes exactly the same tokens from both
    dec = R1OmniDecoder(load_r1omni(cached.tiny.model_dir), max_new_tokens=MAX_NEW)
    live = {cid: g.tokens for cid, g in zip(IDS, dec.decode(vision, audio))}
    assert live == cache_tokens
    # the tokens depend on the clip (otherwise the equality above would prove nothing)
    assert len({tuple(t) for t in cache_tokens.values()}) == len(IDS)
    assert all(len(t) > 0 for t in cache_tokens.values())


def test_outputs_written_and_scored(cached, from_cache):
    summary, out = from_cache
    table = pl.read_csv(out / "combined_results.csv")
    assert table["clip_id"].to_list() == IDS
    assert table["label"].to_list() == ["happy", "sad", "fearful"]
    record = json.loads((out / "clips" / "c2.json").read_text())
    assert set(record) >= {"think", "answer", "text", "tokens", "format_ok", "prediction"}
    score = json.loads((out / "score.json").read_text())
    assert score["exact"]["n"] == 3 and score["open_vocabulary"]["n"] == 3
    assert score["record"]["spec_ids"].keys() == {"r1omni_vision", "r1omni_audio"}
    assert len(score["record"]["manifest_fingerprint"]) == 16 and "commit" in score["record"]["revision"]
    assert abs(sum(score["record"]["gate_weights"]) - 1.0) < 1e-5
    # the random tiny model answers gibberish: every verdict is False and WAR is 0
    assert table["correct"].to_list() == [False, False, False]
    assert score["exact"]["war"] == 0.0


def test_rerun_reuses_finished_clips_and_recomputes_broken_ones(cached, from_cache, tmp_path):
    _, out = from_cache
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "clips" / "c1.json").write_text("{ broken")  # e.g. a crash mid-write of an older version
    again = run_r1omni(cached.manifest, cached.cache, cached.tiny.model_dir, out_dir=copy,
                       batch_size=3, max_new_tokens=MAX_NEW, progress=False)
    assert (again.reused, again.decoded) == (2, 1)
    assert _tokens(copy) == _tokens(out)
    # another instruction is another run: nothing reused
    other = run_r1omni(cached.manifest, cached.cache, cached.tiny.model_dir, out_dir=copy,
                       instruction="Which emotion?", batch_size=3, max_new_tokens=MAX_NEW, progress=False)
    assert (other.reused, other.decoded) == (0, 3)


def test_cli_writes_results_and_prints_summary(cached, tmp_path):
    out = tmp_path / "cli_out"
    res = CliRunner().invoke(cli, [
        "r1omni", str(cached.manifest), "--cache", str(cached.cache), "--model", str(cached.tiny.model_dir),
        "--out", str(out), "--max-new-tokens", "4", "--batch-size", "2", "--no-progress",
    ])
    assert res.exit_code == 0, res.output
    assert "3 decoded" in res.output and "WAR 0.0%" in res.output
    assert len(list((out / "clips").glob("*.json"))) == 3
    assert (out / "combined_results.csv").is_file() and (out / "score.json").is_file()


def test_cli_missing_features_is_one_clear_line(cached, tmp_path):
    import subprocess

    empty = tmp_path / "emptycache"
    (empty / "r1demo").mkdir(parents=True)
    res = subprocess.run(
        [sys.executable, "-c", "from clmer_fusion.cli import main; main()", "r1omni", str(cached.manifest), "--cache", str(empty),
         "--model", str(cached.tiny.model_dir)],
        capture_output=True, text=True,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "r1omni_vision" in lines[0] and "extract" in lines[0]


def test_openset_column_is_the_open_vocabulary_gold(cached, tmp_path):
    df = pl.read_csv(cached.manifest).with_columns(
        pl.Series("openset", ["['happy', 'excited']", "['sad']", "['fear', 'nervous']"]))
    man = tmp_path / "ov.csv"
    df.write_csv(man)
    res = run_r1omni(man, cached.cache, cached.tiny.model_dir, dataset="r1demo", out_dir=tmp_path / "o",
                     batch_size=3, max_new_tokens=2, progress=False)
    ov = res.scores["open_vocabulary"]
    assert ov["gold_column"] == "openset" and ov["n"] == 3 and ov["recall"] == 0.0


def test_spec_choice_and_wrong_spec_is_clear(cached, tmp_path):
    from clmer_features.errors import SpecMismatchError

    store = open_store(cached.cache, "r1demo")
    vid = store.feature("r1omni_vision").spec.spec_id
    res = run_r1omni(cached.manifest, cached.cache, cached.tiny.model_dir, out_dir=tmp_path / "a",
                     spec_ids={"r1omni_vision": vid}, max_new_tokens=1, progress=False)
    assert res.decoded == 3
    with pytest.raises(SpecMismatchError, match="000000000000"):
        run_r1omni(cached.manifest, cached.cache, cached.tiny.model_dir, out_dir=tmp_path / "b",
                   spec_ids={"r1omni_audio": "000000000000"}, max_new_tokens=1, progress=False)


def test_decoding_needs_no_media(cached, from_cache, tmp_path):
    """The cache and the manifest copied where the videos do not exist decode the same tokens."""
    import shutil

    shutil.copytree(cached.cache, tmp_path / "cache")
    pl.read_csv(cached.manifest).with_columns(pl.col("clip_id").map_elements(
        lambda c: f"gone/{c}.mp4", return_dtype=pl.String).alias("video")).write_csv(tmp_path / "r1demo.csv")
    summary = run_r1omni(tmp_path / "r1demo.csv", tmp_path / "cache", cached.tiny.model_dir, out_dir=tmp_path / "o",
                         batch_size=len(IDS), max_new_tokens=MAX_NEW, progress=False)
    assert summary.decoded == len(IDS) and _tokens(tmp_path / "o") == _tokens(from_cache[1])
    near = json.loads((from_cache[1] / "score.json").read_text())["record"]["manifest_fingerprint"]
    far = json.loads((tmp_path / "o" / "score.json").read_text())["record"]["manifest_fingerprint"]
    assert near == far


def test_a_clip_without_audio_gets_ten_seconds_of_silence(cached, tmp_path):
    """Official inference feeds 10 s of silence through the audio tower; --no-audio video-only does not."""
    import shutil

    from clmer_features.engine import extract
    from clmer_features.errors import ClmerError
    from clmer_features.testing import make_video

    shutil.copytree(cached.cache, tmp_path / "cache")
    video = make_video(tmp_path / "mute.mp4", 2.0, audio=False, pattern="rgbtestsrc")
    man = tmp_path / "r1demo.csv"
    pl.concat([pl.read_csv(cached.manifest), pl.DataFrame({"clip_id": ["c3"], "video": [str(video)], "label": ["angry"]})]
              ).write_csv(man)
    extract(man, ["r1omni_vision", "r1omni_audio"], tmp_path / "cache", device="cpu", progress=False, decode_workers=1,
            model_overrides={"r1omni_vision": cached.tiny.siglip_dir, "r1omni_audio": cached.tiny.whisper_dir})
    kw = dict(batch_size=4, max_new_tokens=MAX_NEW, progress=False)
    with pytest.raises(ClmerError, match="pass --audio-tower DIR"):
        run_r1omni(man, tmp_path / "cache", cached.tiny.model_dir, out_dir=tmp_path / "x", **kw)
    res = run_r1omni(man, tmp_path / "cache", cached.tiny.model_dir, out_dir=tmp_path / "s",
                     audio_tower=cached.tiny.whisper_dir, **kw)
    rec = json.loads((tmp_path / "s" / "score.json").read_text())["record"]
    assert res.decoded == 4 and rec["no_audio"] == "silence" and rec["silence_clips"] == ["c3"]
    c3 = json.loads((tmp_path / "s" / "clips" / "c3.json").read_text())
    assert c3["modalities"] == ["video", "audio"] and c3["audio_is_silence"] is True
    # the same tokens as decoding c3's cached vision with the towers' own output of 10 s of silence
    towers = OnTheFlyTowers(cached.tiny.siglip_dir, cached.tiny.whisper_dir)
    from clmer_features.extractors.r1omni import whisper_pooled

    silence = whisper_pooled(towers.audio._encoder, towers.audio._fe, [np.zeros(160000, np.float32)]).astype(np.float16)
    vis = open_store(tmp_path / "cache", "r1demo").feature("r1omni_vision").get("c3").reshape(1, 8, 16, 24)
    dec = R1OmniDecoder(load_r1omni(cached.tiny.model_dir), max_new_tokens=MAX_NEW)
    assert dec.decode(vis, silence)[0].tokens == c3["tokens"]
    mute = run_r1omni(man, tmp_path / "cache", cached.tiny.model_dir, out_dir=tmp_path / "v", no_audio="video-only", **kw)
    rec = json.loads((tmp_path / "v" / "score.json").read_text())["record"]
    assert mute.decoded == 4 and rec["no_audio"] == "video-only" and rec["silence_clips"] == []
    assert json.loads((tmp_path / "v" / "clips" / "c3.json").read_text())["modalities"] == ["video"]
