"""The r1omni_vision / r1omni_audio extractors: specs, shapes, padding, the 30 s limit."""
from __future__ import annotations

import numpy as np
import pytest

from clmer_features.errors import ParameterError
from clmer_features.extractors import get_extractor
from clmer_features.extractors.base import DecodedClip, FrameRequest
from clmer_features.extractors.r1omni import MissingModalityError, pad_frames
from clmer_fusion.r1omni.testing import build_tiny_r1omni


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_r1omni(tmp_path_factory.mktemp("tiny_ext"))


def _clip(cid="x", frames=None, audio=None):
    req = FrameRequest.segments(8)
    fr = {} if frames is None else {req: (frames, np.linspace(0, 1, len(frames)))}
    return DecodedClip(clip_id=cid, keys={"media": cid}, row={}, frames=fr, audio=audio)


def test_specs_record_shapes_and_limits(tiny):
    vis = get_extractor("r1omni_vision")(tiny.siglip_dir)
    aud = get_extractor("r1omni_audio")(tiny.whisper_dir)
    assert vis.frame_request() == FrameRequest.segments(8)
    vp, ap = vis.spec().params, aud.spec().params
    assert vp["shape"] == [8, 16, 24] and vp["layer"] == -2 and vp["dtype"] == "float16"
    assert ap["shape"] == [500, 20] and ap["max_seconds"] == 30.0 and ap["n_mels"] == 128
    assert ap["pool_kernel"] == ap["pool_stride"] == 3
    assert vis.spec().model_id == "google/siglip-base-patch16-224"
    assert aud.spec().model_id == "openai/whisper-large-v3"
    # the spec is the cache key: stable, and another frame count is another spec
    assert vis.spec().spec_id == get_extractor("r1omni_vision")(tiny.siglip_dir).spec().spec_id
    assert get_extractor("r1omni_vision")(tiny.siglip_dir, num_frames=4).spec().spec_id != vis.spec().spec_id
    with pytest.raises(ParameterError, match=r"r1omni_audio: unknown parameter 'pool' \(parameters: none\)"):
        get_extractor("r1omni_audio")(tiny.whisper_dir, pool=5)


def test_vision_rows_times_and_black_padding(tiny):
    vis = get_extractor("r1omni_vision")(tiny.siglip_dir)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (8, 40, 50, 3), dtype=np.uint8)
    short = frames[:3]
    out_full, out_short, out_none = vis.extract([_clip("a", frames), _clip("b", short), _clip("c")])
    assert out_full.values.shape == (8 * 16, 24) and out_full.times.shape == (128,)
    assert np.all(out_full.times[:16] == out_full.times[0]) and out_full.times[16] > out_full.times[0]
    # three real frames, then five black ones: rows of frames 3..7 are identical
    rows = out_short.values.reshape(8, 16, 24)
    np.testing.assert_allclose(rows[:3], out_full.values.reshape(8, 16, 24)[:3], rtol=1e-5, atol=1e-5)
    assert np.array_equal(rows[3], rows[7]) and not np.allclose(rows[2], rows[3])
    assert isinstance(out_none, MissingModalityError) and "no video" in str(out_none)
    padded, t = pad_frames(short, np.array([0.1, 0.2, 0.3]), 8)
    assert padded.shape[0] == 8 and padded[3:].max() == 0 and t.tolist()[-1] == 0.3


def test_audio_is_cut_at_30_seconds_and_pooled_by_3(tiny):
    aud = get_extractor("r1omni_audio")(tiny.whisper_dir)
    rng = np.random.default_rng(1)
    long = (0.1 * rng.standard_normal(16000 * 35)).astype(np.float32)
    short = long[: 16000 * 2]
    o_long, o_30, o_short, o_none = aud.extract(
        [_clip("l", audio=long), _clip("t", audio=long[: 16000 * 30]), _clip("s", audio=short), _clip("n")]
    )
    assert o_long.values.shape == (500, 20) and o_short.values.shape == (500, 20)
    np.testing.assert_array_equal(o_long.values, o_30.values)  # nothing past 30 s reaches the model
    assert not np.allclose(o_long.values, o_short.values)
    assert o_long.times[1] == pytest.approx(0.06) and o_long.times[-1] == pytest.approx(499 * 0.06)
    assert isinstance(o_none, MissingModalityError)


def test_tower_loading_is_quiet(tiny, capfd):
    """No transformers loading bars or load reports: the engine draws its own bar."""
    capfd.readouterr()
    get_extractor("r1omni_vision")(tiny.siglip_dir).load()
    get_extractor("r1omni_audio")(tiny.whisper_dir).load()
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out + err)[-500:]
