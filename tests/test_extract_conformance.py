"""Every registered extractor and preset keeps the extractor contract
(clmer_features.testing.check_extractor), on a tiny random model of its checkpoint's real class
loaded through the same code path as a real folder."""
from __future__ import annotations

import pytest

from clmer_features import testing as T
from clmer_features.extractors import available, get_extractor
from clmer_features.extractors.base import DecodedClip
from clmer_features.media import DecodeJob, decode_clip

from _extract_helpers import media, tiny_models  # noqa: F401  (fixtures)

TEXTS = ["hello happy day", "oh no this is terrible and sad, i cannot believe it", "wow"]
# settings that keep a tiny random model quick (a random Whisper would generate 448 tokens); asr
# unpacked: a packed clip's words depend on its neighbours in the window by design, so "alone =
# in a batch" holds one clip a window (packing's own rules: tests/test_asr_pack.py)
PARAMS = {"asr": {"beam_size": 1, "max_new_tokens": 4, "language": "en", "pack": False,
                "precision": "float32"}}  # auto: fp16 on a GPU, by design


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


def clips_for(cls, media) -> list[DecodedClip]:
    """Three clips of different sizes with the extractor's input (faces: real faces)."""
    if cls.name == "faces":
        from clmer_features.testing_faces import make_face_video

        req = cls(None).frame_request()
        out = []
        for kind, seconds in (("pan_zoom", 4.0), ("leaves", 6.0), ("pan_zoom", 2.0)):
            path = make_face_video(media["av"].parent / f"faces-{kind}-{seconds:g}.mp4", kind, seconds=seconds,
                                   fps=5).path
            r = decode_clip(DecodeJob(path.stem, str(path), None, None, (req,), False))
            out.append(DecodedClip(path.stem, {"media": path.stem}, {}, frames=r.frames, duration=r.duration))
        return out
    if cls.input == "text":
        return [DecodedClip(f"t{i}", {"text": f"t{i}"}, {"text": t}, text=t) for i, t in enumerate(TEXTS)]
    req = cls(None).frame_request() if cls.input == "video" else None
    out = []
    for name in ("av", "odd", "wav") if cls.input == "audio" else ("av", "odd", "unicode"):
        r = decode_clip(DecodeJob(name, str(media[name]), None, None, (req,) if req else (), cls.input == "audio"))
        out.append(DecodedClip(name, {"media": name}, {}, frames=r.frames, audio=r.audio, duration=r.duration))
    return out


@pytest.mark.parametrize("name", available())
def test_every_feature_conforms(name, zoo, media):
    cls = get_extractor(name)
    model_dir = T.tiny_model(cls.default_model, zoo) if cls.default_model else None
    clips = clips_for(cls, media)
    if cls.input == "audio":
        # three lengths, so a padded batch would show (emotion2vec's own tracker reports padded
        # batches giving other numbers: here each clip equals itself alone)
        assert len({len(c.audio) for c in clips}) == 3
    outs = T.check_extractor(cls, model_dir, clips, **PARAMS.get(name, {}))
    assert len(outs) == 3


def test_conformance_catches_a_broken_extractor(tiny_models, monkeypatch):
    from clmer_features.extractors import base
    from clmer_features.extractors.bert import BertExtractor

    class Leaky(BertExtractor):  # puts the device into its spec
        def spec(self):
            s = super().spec()
            return type(s).create(s.feature, model_id=s.model_id, weights_digest=s.weights_digest,
                                  params={**s.params, "on": self.device})

    class Greedy(BertExtractor):  # loads its model to build the spec
        def spec(self):
            self.load()
            return super().spec()

    clips = [DecodedClip("a", {}, {"text": "hi"}, text="hi"), DecodedClip("b", {}, {"text": "ho"}, text="ho")]
    get_extractor("bert")  # load the built-ins first
    monkeypatch.setitem(base._REGISTRY, "bert", Leaky)
    with pytest.raises(AssertionError, match="the device changes the spec"):
        T.check_extractor(Leaky, tiny_models / T.BERT_ID, clips)
    monkeypatch.setitem(base._REGISTRY, "bert", Greedy)
    with pytest.raises(AssertionError, match="loaded the model"):
        T.check_extractor(Greedy, tiny_models / T.BERT_ID, clips)
    assert "load" not in Greedy.__dict__  # the guard is removed again
