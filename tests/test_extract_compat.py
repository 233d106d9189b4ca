"""Existing caches stay valid across the extractor contract (issue 12).

- The spec dicts of the six extractors are pinned (``data/pinned_specs.json``, written by the code
  before the contract), for default and changed parameters, on cpu and cuda. asr's default became
  ``pack=true``: the entries of before name ``pack: false`` (their specs unchanged), and the
  packed default's spec is pinned beside them.
- A store written before the contract (``data/prechange``, see its ``make_prechange.py``) is read
  by today's code and resumed without recomputing anything: same spec ids, nothing loaded,
  only a new clip is computed (asr keeps its unpacked spec: ``pack`` is not given, and the
  store holds the spec of its former default).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from clmer_features import testing as T
from clmer_features.engine import extract
from clmer_features.extractors import get_extractor
from clmer_features.store import open_store

DATA = Path(__file__).parent / "data"


def _maker():
    spec = importlib.util.spec_from_file_location("make_prechange", DATA / "prechange" / "make_prechange.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MAKER = _maker()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("models")
    return root, MAKER.build_models(root)


def test_spec_dicts_are_pinned(models) -> None:
    root, overrides = models
    folders = {"siglip": root / T.SIGLIP_ID, "bert": root / T.BERT_ID,
               "emotion2vec": root / "emotion2vec/emotion2vec_base", "asr": root / "openai/whisper-large-v3-turbo",
               **overrides}
    cases = json.loads((DATA / "pinned_specs.json").read_text())
    assert len(cases) == 24
    for case in cases:
        got = get_extractor(case["feature"])(folders[case["feature"]], device=case["device"], **case["params"])
        spec = got.spec().to_dict()
        spec["weights_digest"] = "<digest>"
        assert spec == case["spec"], (case["feature"], case["params"], case["device"])


def test_a_store_written_before_the_contract_is_read_and_resumed(models, tmp_path, monkeypatch) -> None:
    root, overrides = models
    work = tmp_path / "prechange"
    shutil.copytree(DATA / "prechange", work, ignore=shutil.ignore_patterns("*.py"))
    for p in (work / "media").iterdir():
        os.utime(p, ns=(MAKER.MTIME, MAKER.MTIME))
    store = open_store(work / "cache", "clips")
    before = {s.feature: s.spec_id for s in store.specs()}
    assert before == {"siglip": "e3c86f4bc1cd", "emotion2vec": "c051fb737a32", "asr": "94b876cc39ea",
                      "bert": "8d83c34aabcb", "r1omni_vision": "a267ba3ec6d0", "r1omni_audio": "5d98a551b194"}
    stored_bert = store.feature("bert").get("tone").copy()

    def no_load(self):
        raise AssertionError(f"{self.name}: a resumed store must not load a model")

    with monkeypatch.context() as m:
        for name in MAKER.FEATURES:
            m.setattr(get_extractor(name), "load", no_load)
        s = extract(work / "clips.csv", MAKER.FEATURES, work / "cache", models_dir=root, model_overrides=overrides,
                    device="cpu", progress=False, params=MAKER.PARAMS)
    for name in MAKER.FEATURES:
        st = s.features[name]
        assert (st.spec_id, st.planned, st.done) == (before[name], 0, 0), name
    assert len(s.notes) == 1 and s.notes[0].startswith("asr: kept the spec 94b876cc39ea this cache holds (pack=false")
    assert s.features["bert"].skipped == 2 and s.features["siglip"].skipped == 2
    assert {sp.feature: sp.spec_id for sp in open_store(work / "cache", "clips").specs()} == before
    np.testing.assert_array_equal(open_store(work / "cache", "clips").feature("bert").get("tone"), stored_bert)

    # a new clip is computed, and only it
    T.make_wav(work / "media" / "tone2.wav", 1.2, freq=440.0)
    T.write_manifest(work / "more.csv", [
        {"clip_id": "av", "video": "media/av.mp4", "text": "hello happy day"},
        {"clip_id": "tone", "audio": "media/tone.wav"},
        {"clip_id": "tone2", "audio": "media/tone2.wav", "text": "a new one"},
    ])
    s = extract(work / "more.csv", MAKER.FEATURES, work / "cache", dataset="clips", models_dir=root,
                model_overrides=overrides, device="cpu", progress=False, params=MAKER.PARAMS)
    for name in MAKER.FEATURES:
        st = s.features[name]
        assert st.spec_id == before[name] and st.skipped == 2 and st.done + st.absent == 1, (name, st)
    assert set(open_store(work / "cache", "clips").feature("emotion2vec").clip_ids) == {"av", "tone", "tone2"}
