"""SigLIP rows equal a direct transformers forward on the same frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clmer_features import testing as T
from clmer_features.engine import extract
from clmer_features.errors import ModelNotFoundError
from clmer_features.extractors import get_extractor
from clmer_features.extractors.base import DecodedClip, FrameRequest
from clmer_features.media import DecodeJob, decode_clip
from clmer_features.store import open_store

from _extract_helpers import media, tiny_models  # noqa: F401  (fixtures)


def direct_forward(model_dir, frames: np.ndarray) -> np.ndarray:
    """What a researcher would write: processor from the folder, vision model, pooler_output."""
    import transformers

    proc_cls = getattr(transformers, "SiglipImageProcessorPil", transformers.SiglipImageProcessor)
    proc = proc_cls.from_pretrained(str(model_dir))
    model = transformers.SiglipVisionModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        outs = [model(**proc(images=[f], return_tensors="pt")).pooler_output[0].numpy() for f in frames]
    return np.stack(outs)


def test_siglip_rows_equal_direct_forward(tiny_models, media):
    model_dir = tiny_models / T.SIGLIP_ID
    ext = get_extractor("siglip")(model_dir)
    req = ext.frame_request()
    assert req == FrameRequest.interval(2.0)
    clips = []
    for name in ("av", "av2", "odd"):
        r = decode_clip(DecodeJob(name, str(media[name]), None, None, (req,), False))
        clips.append(DecodedClip(name, {"media": name}, {}, frames=r.frames))
    outs = ext.extract(clips)  # one batch across the three clips
    for c, o in zip(clips, outs):
        frames, times = c.frames[req]
        want = direct_forward(model_dir, frames)
        assert o.values.shape == (len(frames), 32)
        np.testing.assert_allclose(o.values, want, rtol=1e-4, atol=1e-5)
        assert o.times.tolist() == times.tolist()
    assert [len(o.values) for o in outs] == [3, 2, 1]


def test_siglip_through_engine_matches_direct(tiny_models, media, tmp_path):
    man = T.write_manifest(tmp_path / "clips.csv", [{"clip_id": "av", "video": str(media["av"])}])
    s = extract(man, ["siglip"], tmp_path / "cache", models_dir=tiny_models, device="cpu", progress=False)
    assert s.features["siglip"].done == 1
    feat = open_store(tmp_path / "cache", "clips").feature("siglip")
    r = decode_clip(DecodeJob("av", str(media["av"]), None, None, (FrameRequest.interval(2.0),), False))
    want = direct_forward(tiny_models / T.SIGLIP_ID, r.frames[FrameRequest.interval(2.0)][0])
    np.testing.assert_allclose(feat.get("av"), want, rtol=2e-3, atol=2e-3)  # stored as fp16
    assert feat.times("av").tolist() == [0.0, 2.0, 4.0]
    assert feat.spec.params["frame_interval"] == 2.0
    assert feat.spec.params["preprocess"]["size"] == {"height": 32, "width": 32}


def test_siglip_spec_tracks_weights_and_interval(tiny_models, tmp_path):
    cls = get_extractor("siglip")
    a = cls(tiny_models / T.SIGLIP_ID).spec()
    assert a.spec_id == cls(tiny_models / T.SIGLIP_ID, device="cuda").spec().spec_id  # device is not in it
    assert a.spec_id != cls(tiny_models / T.SIGLIP_ID, frame_interval=1.0).spec().spec_id
    other = T.make_tiny_siglip(tmp_path / "m2", seed=1)
    b = cls(other).spec()
    assert b.weights_digest != a.weights_digest and b.spec_id != a.spec_id


def test_siglip_refuses_a_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="no weight files"):
        get_extractor("siglip")(tmp_path).spec()
