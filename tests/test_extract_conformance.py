"""Every extractor of this area keeps the extractor contract (clmer_features.testing.check_extractor)."""
from __future__ import annotations

import pytest

from clmer_features import testing as T
from clmer_features.extractors import get_extractor
from clmer_features.extractors.base import DecodedClip, FrameRequest
from clmer_features.media import DecodeJob, decode_clip

from _extract_helpers import media, tiny_models  # noqa: F401  (fixtures)


def test_siglip_conforms(tiny_models, media):
    req = FrameRequest.interval(2.0)
    clips = []
    for name in ("av", "odd", "unicode"):
        r = decode_clip(DecodeJob(name, str(media[name]), None, None, (req,), False))
        clips.append(DecodedClip(name, {"media": name}, {}, frames=r.frames))
    outs = T.check_extractor(get_extractor("siglip"), tiny_models / T.SIGLIP_ID, clips)
    assert [len(o.values) for o in outs] == [3, 1, 1]


def test_bert_conforms(tiny_models):
    texts = ["hello happy day", "oh no this is terrible and sad", "wow"]
    clips = [DecodedClip(f"c{i}", {"text": f"c{i}"}, {"text": t}, text=t) for i, t in enumerate(texts)]
    outs = T.check_extractor(get_extractor("bert"), tiny_models / T.BERT_ID, clips)
    assert all(o.pooled.shape == (32,) for o in outs)


def test_conformance_catches_a_broken_extractor(tiny_models, monkeypatch):
    from clmer_features.extractors import base
    from clmer_features.extractors.bert import BertExtractor

    class Leaky(BertExtractor):  # puts the device into its spec
        def spec(self):
            s = super().spec()
            return type(s).create(s.feature, model_id=s.model_id, weights_digest=s.weights_digest,
                                  params={**s.params, "on": self.device})

    get_extractor("bert")  # load the built-ins first
    monkeypatch.setitem(base._REGISTRY, "bert", Leaky)
    with pytest.raises(AssertionError, match="the device changes the spec"):
        T.check_extractor(Leaky, tiny_models / T.BERT_ID, [DecodedClip("a", {}, {"text": "hi"}, text="hi")])
