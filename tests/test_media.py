"""Decoding: frame times, segments, audio resampling, absent vs broken, crash isolation."""
from __future__ import annotations

import numpy as np
import pytest

from clmer_features import testing as T
from clmer_features.extractors.base import FrameRequest
from clmer_features.media import DecodeJob, DecoderPool, decode_clip, interval_times, select_frames

from _extract_helpers import media  # noqa: F401  (fixture)

EVERY2 = FrameRequest.interval(2.0)
SEG8 = FrameRequest.segments(8)


def job(path, clip_id="c", start=None, end=None, frames=(EVERY2,), audio=True):
    return DecodeJob(clip_id, str(path), start, end, tuple(frames), audio)


def test_interval_times_start_at_zero_and_cover_the_clip():
    assert interval_times(5.0, 2.0).tolist() == [0.0, 2.0, 4.0]
    assert interval_times(4.0, 2.0).tolist() == [0.0, 2.0]
    assert interval_times(0.3, 2.0).tolist() == [0.0]
    assert interval_times(0.0, 2.0).tolist() == [0.0]


def test_segments_pick_middle_frames():
    stamps = np.arange(80) / 10.0  # 8 s at 10 fps
    idx = select_frames(stamps, 0.0, 8.0, SEG8)
    # R1-Omni's rule: round((i + 0.5) * (n - 1) / 8) of the n frames
    assert idx.tolist() == [5, 15, 25, 35, 44, 54, 64, 74]
    idx = select_frames(stamps, 2.0, 4.0, FrameRequest.segments(4))
    assert idx.tolist() == [22, 27, 32, 37]


def test_video_frames_every_two_seconds_and_audio_16k(media):
    r = decode_clip(job(media["av"], frames=(EVERY2, SEG8)))
    assert r.problems == {}
    frames, times = r.frames[EVERY2]
    assert frames.shape == (3, 48, 64, 3) and frames.dtype == np.uint8
    assert times.tolist() == [0.0, 2.0, 4.0]
    assert not np.array_equal(frames[0], frames[1])  # the pattern moves
    seg, stimes = r.frames[SEG8]
    assert seg.shape[0] == 8 and np.all(np.diff(stimes) > 0) and 0 < stimes[0] < 0.5
    assert r.audio.dtype == np.float32 and abs(len(r.audio) / 16000 - 5.0) < 0.05
    # a 440 Hz sine: the spectrum peaks there
    spec = np.abs(np.fft.rfft(r.audio[:16000]))
    assert abs(np.argmax(spec) - 440) <= 2


def test_segment_with_start_end_and_short_clip(media):
    r = decode_clip(job(media["av"], start=1.0, end=4.5))
    assert r.frames[EVERY2][1].tolist() == [0.0, 2.0]
    assert abs(len(r.audio) / 16000 - 3.5) < 0.01
    r = decode_clip(job(media["av"], start=1.0, end=1.3))
    assert r.frames[EVERY2][0].shape[0] == 1 and r.frames[EVERY2][1].tolist() == [0.0]
    assert abs(len(r.audio) - 4800) <= 1


def test_missing_streams_are_absent_not_errors(media):
    r = decode_clip(job(media["noaudio"]))
    assert r.problems == {"audio": ("absent", "no audio stream")}
    assert r.audio is None and r.frames[EVERY2][0].shape[0] == 2
    r = decode_clip(job(media["wav"]))
    assert r.problems == {"video": ("absent", "no video stream")}
    assert r.frames == {} and abs(len(r.audio) / 16000 - 2.5) < 0.01


def test_8k_stereo_becomes_16k_mono(media):
    r = decode_clip(job(media["wav8k"], frames=()))
    assert r.audio.ndim == 1 and abs(len(r.audio) - 32000) <= 2
    spec = np.abs(np.fft.rfft(r.audio[:16000]))
    assert abs(np.argmax(spec) - 330) <= 2


@pytest.mark.parametrize(
    "kind, start, expect",
    [
        ("truncated", None, "cannot read media"),
        ("empty", None, "empty file (0 bytes)"),
        ("missing", None, "file not found"),
        ("av", 9.0, "start 9s is past the end"),
    ],
)
def test_broken_inputs_give_a_reason(media, tmp_path, kind, start, expect):
    path = tmp_path / "nope.mp4" if kind == "missing" else media[kind]
    r = decode_clip(job(path, start=start, end=None if start is None else start + 2))
    assert set(r.problems) == {"video", "audio"}
    for k, msg in r.problems.values():
        assert k == "error" and expect in msg, msg
    assert r.frames == {} and r.audio is None


def test_corrupt_file_truncated_audio_is_a_failure(tmp_path):
    src = T.make_video(tmp_path / "long.mp4", 20.0, size=(160, 120), fps=25)
    bad = T.make_corrupt(src, tmp_path / "corrupt.mp4")
    r = decode_clip(job(bad, frames=()))
    kind, msg = r.problems["audio"]
    assert kind == "error" and "container says 20.00s" in msg
    assert r.audio is None


def test_odd_size_rotation_and_unicode_name(media, tmp_path):
    r = decode_clip(job(media["odd"]))
    assert r.problems == {} and r.frames[EVERY2][0].shape[1:] == (47, 63, 3)
    r = decode_clip(job(media["unicode"]))
    assert r.problems == {} and r.frames[EVERY2][0].shape[0] == 1
    rot = T.make_video(tmp_path / "rot.mp4", 2.0, size=(64, 48), rotate=90)
    r = decode_clip(job(rot, audio=False))
    # displayed upright, as ffmpeg shows it: portrait
    assert r.frames[EVERY2][0].shape[1:] == (64, 48, 3)


def test_pool_survives_a_crashing_decoder(media, capfd):
    jobs = [job(media["av"], "a"), job(media["av"], "crash-1"), job(media["wav"], "b"), job(media["truncated"], "t")]
    with DecoderPool(workers=1, fn=T.crashing_decode) as pool:
        out = {j.clip_id: r for j, r in pool.imap(jobs)}
        assert pool.restarts >= 1
    assert list(out) == ["a", "crash-1", "b", "t"]
    assert out["a"].problems == {} and out["a"].frames[EVERY2][0].shape[0] == 3
    assert out["b"].problems == {"video": ("absent", "no video stream")}
    assert out["crash-1"].problems["video"][0] == "error"
    assert "crashed" in out["crash-1"].problems["video"][1]
    assert "cannot read media" in out["t"].problems["video"][1]
    # ffmpeg's complaints about the truncated file do not reach the terminal
    assert "moov atom" not in capfd.readouterr().err


def test_in_process_decoding_matches_the_pool(media):
    jobs = [job(media["av"], "a", frames=(EVERY2, SEG8))]
    with DecoderPool(workers=0) as p0, DecoderPool(workers=1) as p1:
        (_, r0), = list(p0.imap(jobs))
        (_, r1), = list(p1.imap(jobs))
    for req in (EVERY2, SEG8):
        assert np.array_equal(r0.frames[req][0], r1.frames[req][0])
    assert np.array_equal(r0.audio, r1.audio)


def test_pyav_and_ffprobe_probes_agree(media, tmp_path):
    from clmer_features.media_probe import _av_probe, _ffprobe

    rot = T.make_video(tmp_path / "rot.mp4", 2.0, rotate=90)
    for name, path in [*media.items(), ("rot", rot)]:
        if name in ("empty", "truncated"):
            continue
        a, f = _av_probe(str(path), True), _ffprobe(str(path))
        assert (a.has_video, a.has_audio, a.rotation, a.width, a.height) == (
            f.has_video, f.has_audio, f.rotation, f.width, f.height), name
        assert abs((a.duration or 0) - (f.duration or 0)) < 0.05, name
    assert _av_probe(str(rot), True).rotation == 90


def test_separate_audio_file_next_to_a_silent_video(media):
    j = DecodeJob("c", str(media["noaudio"]), None, None, (EVERY2,), True, audio_path=str(media["wav"]))
    r = decode_clip(j)
    assert r.problems == {}
    assert r.frames[EVERY2][1].tolist() == [0.0, 2.0]
    assert abs(len(r.audio) / 16000 - 2.5) < 0.01  # the wav's audio, not the (absent) video track


def test_a_hanging_decoder_times_out_and_the_rest_go_on(media):
    jobs = [job(media["av"], "a"), job(media["av"], "hang-1"), job(media["wav"], "b")]
    with DecoderPool(workers=1, timeout_s=3.0, fn=T.crashing_decode) as pool:
        out = {j.clip_id: r for j, r in pool.imap(jobs)}
    assert out["a"].problems == {} and out["b"].problems == {"video": ("absent", "no video stream")}
    kind, msg = out["hang-1"].problems["video"]
    assert kind == "error" and "longer than 3s" in msg


def test_segments_of_one_file_decode_its_audio_once(media):
    from clmer_features import media as M

    before = M._AUDIO_CACHE["decodes"]
    r1 = decode_clip(job(media["av2"], "s1", start=0.0, end=1.0, frames=()))
    r2 = decode_clip(job(media["av2"], "s2", start=1.0, end=2.5, frames=()))
    assert M._AUDIO_CACHE["decodes"] - before == 1
    full = decode_clip(job(media["av2"], "all", frames=()))
    assert np.array_equal(np.concatenate([r1.audio, r2.audio]), full.audio[:40000])
    keep = float(full.audio[0])
    r1.audio[0] = keep + 1.0  # a clip's samples are its own copy, not a view of the cache
    assert float(M._AUDIO_CACHE["samples"][0]) == keep


def test_decoders_exit_when_their_parent_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "from clmer_features.media import DecoderPool\n"
        "import os, time\n"
        "pool = DecoderPool(workers=1)\n"
        "ex = pool._executor()\n"
        "ex.submit(os.getpid).result()\n"
        "print(*[p.pid for p in ex._processes.values()], flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert pids
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    alive = pids
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat").read().split()[2]]
    assert not alive, f"decoder processes {alive} outlived their killed parent"


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory):
    """A 10-minute mp4 (1 fps gray 32x24, 16 kbit/s aac; made in ~5 s) and a copy with 256
    random bytes at 95% of the file (in the audio of the last minute)."""
    d = tmp_path_factory.mktemp("long")
    src = d / "long.mp4"
    T._ffmpeg("-f", "lavfi", "-i", "color=c=gray:size=32x24:rate=1:duration=600", "-f", "lavfi", "-i",
              "sine=frequency=300:sample_rate=16000:duration=600", "-c:v", "libx264", "-preset", "ultrafast",
              "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "16k", "-shortest", str(src))
    return src, T.make_corrupt(src, d / "corrupt.mp4", at=0.95, length=256)


@pytest.mark.slow
def test_a_few_corrupt_bytes_near_the_end_of_a_long_file_fail_the_audio(ten_minutes):
    """256 bytes lose 6 s of 600: a failure whatever the length (0.25 s + 2% let 12 s pass)."""
    from clmer_features.media import SHORTFALL_LIMIT_S

    clean, bad = ten_minutes
    ok = decode_clip(job(clean, frames=()))
    assert ok.problems == {} and abs(len(ok.audio) / 16000 - 600) < SHORTFALL_LIMIT_S
    kind, msg = decode_clip(job(bad, frames=())).problems["audio"]
    assert kind == "error" and "audio decodes to 594.05s but the container says 600.00s" in msg


def test_frames_short_of_the_container_fail_the_video(tmp_path):
    src = tmp_path / "v.webm"  # WebM: no index, decord finds the frames it can read
    T._ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x24:rate=2:duration=120", "-c:v", "libvpx", "-deadline",
              "realtime", "-cpu-used", "8", "-pix_fmt", "yuv420p", str(src))
    assert len(decode_clip(job(src)).frames[FrameRequest.interval(2.0)][0]) == 60
    bad = T.make_corrupt(src, tmp_path / "bad.webm", at=0.99, length=256)
    kind, msg = decode_clip(job(bad)).problems["video"]
    assert kind == "error" and "video decodes to 119.00s but the container says 120.00s" in msg



@pytest.mark.slow
def test_the_corrupt_long_file_is_a_ledger_failure_not_done(ten_minutes, tmp_path):
    import polars as pl

    from clmer_features.engine import extract
    from clmer_features.store import open_store
    from clmer_features.testing_audio import make_tiny_emotion2vec

    _, bad = ten_minutes
    model = make_tiny_emotion2vec(tmp_path / "e2v")
    manifest = T.write_manifest(tmp_path / "long.csv", [{"clip_id": "long", "audio": str(bad)}])
    s = extract(manifest, ["emotion2vec"], tmp_path / "cache", model_overrides={"emotion2vec": model},
                device="cpu", progress=False, decode_workers=0)
    assert (s.features["emotion2vec"].done, s.features["emotion2vec"].failed) == (0, 1)
    led = open_store(tmp_path / "cache", "long").ledger().filter(pl.col("clip_id") == "long").row(0, named=True)
    assert led["kind"] == "error" and "594.05s but the container says 600.00s" in led["message"]
