"""The Hugging Face families give the numbers of the model itself, with MERTools' conventions.

Each test computes a reference the way MERTools' extraction scripts do (or the model's
own documented call) directly with transformers, and compares the family's rows.
"""
from __future__ import annotations

import numpy as np
import pytest

from clmer_features import testing_zoo as Z
from clmer_features.errors import ClmerError, ModelNotFoundError
from clmer_features.extractors import get_extractor
from clmer_features.extractors.base import DecodedClip
from clmer_features.extractors.hf_speech import SpeechExtractor
from clmer_features.extractors.hf_text import TextEncoderExtractor
from clmer_features.extractors.hf_vision import VisionFramesExtractor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    Z.make_zoo(root, [Z.CLIP_ID, Z.DINOV2_ID, Z.VIDEOMAE_ID, Z.HUBERT_ID, Z.WAV2VEC2_ID, Z.WHISPER_ID, Z.ROBERTA_ID])
    Z.make_tiny_vit(root)
    Z.make_tiny_data2vec_audio(root)
    return root


def frames_clip(ext, n=3, seed=0, size=(40, 56)):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
    return DecodedClip("v", {"media": "v"}, {}, frames={ext.frame_request(): (frames, np.arange(n, dtype=np.float32))})


def speech(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def audio_clip(x, cid="a"):
    return DecodedClip(cid, {"media": cid}, {}, audio=x)


# --------------------------------------------------------------------------- vision
def test_clip_preset_is_the_projected_image_embedding(zoo):
    import torch
    from transformers import CLIPImageProcessorPil, CLIPModel

    ext = get_extractor("clip")(zoo / Z.CLIP_ID)
    clip = frames_clip(ext)
    out = ext.extract([clip])[0]
    frames = clip.frames[ext.frame_request()][0]
    model = CLIPModel.from_pretrained(zoo / Z.CLIP_ID).eval()
    pix = CLIPImageProcessorPil.from_pretrained(zoo / Z.CLIP_ID)(images=list(frames), return_tensors="pt")
    with torch.no_grad():
        ref = model.get_image_features(**pix).pooler_output.numpy()  # MERTools: no L2 normalisation
    assert out.values.shape == (3, 24)  # the projection, not the 32-d tower
    np.testing.assert_allclose(out.values, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.pooled, ref.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out.times, [0, 1, 2])


def test_dinov2_preset_sums_the_tokens_of_the_last_hidden_state_before_the_norm(zoo):
    import torch
    from transformers import AutoImageProcessor, Dinov2Model

    ext = get_extractor("dinov2")(zoo / Z.DINOV2_ID)
    assert ext.frame_request().kind == "segments" and ext.frame_request().count == 64
    clip = frames_clip(ext, n=64)
    out = ext.extract([clip])[0]
    model = Dinov2Model.from_pretrained(zoo / Z.DINOV2_ID).eval()
    proc = AutoImageProcessor.from_pretrained(zoo / Z.DINOV2_ID, backend="pil")
    with torch.no_grad():
        res = model(**proc(images=list(clip.frames[ext.frame_request()][0]), return_tensors="pt"),
                    output_hidden_states=True)
    ref = res.hidden_states[-1].sum(dim=1).numpy()
    assert not np.allclose(ref, res.last_hidden_state.sum(dim=1).numpy(), atol=1e-3)  # the norm matters
    np.testing.assert_allclose(out.values, ref, rtol=1e-4, atol=1e-4)


def test_vision_family_serves_any_image_encoder_with_a_choice_of_output(zoo):
    vit = VisionFramesExtractor
    clip = frames_clip(vit(zoo / "google/vit-base-patch16-224-in21k"))
    pooler = vit(zoo / "google/vit-base-patch16-224-in21k", output="pooler").extract([clip])[0].values
    cls = vit(zoo / "google/vit-base-patch16-224-in21k", output="cls").extract([clip])[0].values
    mean2 = vit(zoo / "google/vit-base-patch16-224-in21k", output="mean", layer="2").extract([clip])[0].values
    assert pooler.shape == cls.shape == mean2.shape == (3, 32)
    assert np.abs(pooler).max() <= 1.0  # ViT's pooler is a tanh
    assert not np.allclose(cls, mean2)
    with pytest.raises(ClmerError, match="output=image_features needs a model with an image projection"):
        vit(zoo / "google/vit-base-patch16-224-in21k", output="image_features").load()
    with pytest.raises(ClmerError, match=r"hf_vision\.layer: output=pooler is the model's own last layer"):
        vit(zoo / "google/vit-base-patch16-224-in21k", output="pooler", layer="-2")
    with pytest.raises(ClmerError, match=r"hf_vision\.layer: expected one of last, sum_last4, mean_last4"):
        vit(zoo / "google/vit-base-patch16-224-in21k", layer="top")
    with pytest.raises(ModelNotFoundError, match="hf_vision needs a model folder"):
        vit(None).spec()


def test_videomae_preset_gives_mertools_tubelet_rows(zoo):
    import torch
    from transformers import AutoImageProcessor, VideoMAEModel

    ext = get_extractor("videomae")(zoo / Z.VIDEOMAE_ID)
    clip = frames_clip(ext, n=16)
    clip.frames[ext.frame_request()] = (clip.frames[ext.frame_request()][0], np.arange(16, dtype=np.float32) * 0.25)
    out = ext.extract([clip])[0]
    model = VideoMAEModel.from_pretrained(zoo / Z.VIDEOMAE_ID).eval()
    proc = AutoImageProcessor.from_pretrained(zoo / Z.VIDEOMAE_ID, backend="pil")
    with torch.no_grad():
        h = model(**proc([list(clip.frames[ext.frame_request()][0])], return_tensors="pt")).last_hidden_state
    ref = h[0].reshape(8, -1, h.shape[-1]).mean(dim=1).numpy()  # MERTools: (16/tubelet, patches, D) -> mean
    np.testing.assert_allclose(out.values, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.times, np.arange(8) * 0.5 + 0.125)  # the mean time of each tubelet's 2 frames
    two = get_extractor("videomae")(zoo / Z.VIDEOMAE_ID, clip_count=2, rows="clip")
    assert two.frame_request().count == 32
    assert two.extract([frames_clip(two, n=32)])[0].values.shape == (2, 32)
    with pytest.raises(ClmerError, match="takes clips of 16 frames, not 8"):
        get_extractor("videomae")(zoo / Z.VIDEOMAE_ID, frame_count=8).load()


# --------------------------------------------------------------------------- speech
def mertools_audio(folder, x):
    """MERTools' extract_audio_huggingface.py: normalise once, 10 s chunks (zero-padded), sum of
    the last 4 hidden states, chunks flattened (padded tail rows included)."""
    import torch
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    model = AutoModel.from_pretrained(folder).eval()
    fe = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    inp = fe(x, sampling_rate=16000, return_tensors="pt").input_values
    if inp.shape[1] > 160000:
        n = -(-inp.shape[1] // 160000)
        inp = torch.cat([inp, torch.zeros(1, n * 160000 - inp.shape[1])], dim=1).reshape(n, 160000)
    with torch.no_grad():
        hs = model(inp, output_hidden_states=True).hidden_states
    return torch.stack(hs)[-4:].sum(dim=0).reshape(-1, hs[-1].shape[-1]).numpy()


@pytest.mark.parametrize("hub_id", [Z.HUBERT_ID, Z.WAV2VEC2_ID])
def test_speech_presets_reproduce_mertools_windows(zoo, hub_id):
    feature = {Z.HUBERT_ID: "hubert", Z.WAV2VEC2_ID: "wav2vec2"}[hub_id]
    x = speech(23.5)
    ref = mertools_audio(zoo / hub_id, x)
    keep = get_extractor(feature)(zoo / hub_id, tail="keep", window_batch=2).extract([audio_clip(x)])[0]
    np.testing.assert_allclose(keep.values, ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(keep.pooled, ref.mean(axis=0), rtol=1e-3, atol=1e-3)  # MERTools' UTT
    drop = get_extractor(feature)(zoo / hub_id).extract([audio_clip(x)])[0]
    assert drop.times[-1] < 23.5 <= keep.times[-1]
    np.testing.assert_allclose(drop.values, keep.values[:len(drop.values)], rtol=1e-4, atol=1e-4)
    # a 10 s window gives 499 rows 20 ms apart; the next window's rows start at 10 s
    assert np.all(np.diff(drop.times) > 0) and drop.times[498] == pytest.approx(9.96) \
        and drop.times[499] == pytest.approx(10.0)
    short = speech(3.0)  # within one window: its own length, no padding
    np.testing.assert_allclose(get_extractor(feature)(zoo / hub_id).extract([audio_clip(short)])[0].values,
                               mertools_audio(zoo / hub_id, short), rtol=1e-3, atol=1e-3)


def test_speech_windows_bound_the_batch_and_do_not_change_numbers(zoo):
    clips = [audio_clip(speech(s, seed=i), f"c{i}") for i, s in enumerate((31.0, 4.0, 12.0, 4.0))]
    one = SpeechExtractor(zoo / "facebook/data2vec-audio-base", window_batch=1)
    many = SpeechExtractor(zoo / "facebook/data2vec-audio-base", window_batch=8)
    batched = many.extract(clips)
    # 10 s windows give 499 rows each; the last one's rows stop at the audio's end
    assert [len(b.values) for b in batched] == [3 * 499 + 50, 199, 499 + 100, 199]
    for c, b in zip(clips, batched):
        alone = one.extract([c])[0]
        np.testing.assert_allclose(alone.values, b.values, rtol=1e-3, atol=1e-4)
        assert len(b.times) == len(b.values) and b.times[-1] < len(c.audio) / 16000


def test_audio_shorter_than_one_frame_is_that_clips_error(zoo):
    outs = SpeechExtractor(zoo / Z.HUBERT_ID).extract([audio_clip(speech(0.01), "tiny"), audio_clip(speech(1.0))])
    assert isinstance(outs[0], ValueError) and "0.010 s of audio is too short" in str(outs[0])
    assert outs[1].values.shape == (49, 32)


def test_whisper_encoder_rows_cover_the_audio_only(zoo):
    import torch
    from transformers import WhisperFeatureExtractor, WhisperModel

    x = speech(3.0)
    out = get_extractor("whisper_encoder")(zoo / Z.WHISPER_ID).extract([audio_clip(x)])[0]
    enc = WhisperModel.from_pretrained(zoo / Z.WHISPER_ID).eval().get_encoder()
    feats = WhisperFeatureExtractor.from_pretrained(zoo / Z.WHISPER_ID)(x, sampling_rate=16000, return_tensors="pt")
    assert feats.input_features.shape[1] == 128  # large-v3's mel bins
    with torch.no_grad():
        ref = enc(feats.input_features).last_hidden_state[0, :150].numpy()
    np.testing.assert_allclose(out.values, ref, rtol=1e-4, atol=1e-4)
    long = get_extractor("whisper_encoder")(zoo / Z.WHISPER_ID).extract([audio_clip(speech(41.0))])[0]
    assert len(long.values) == 2050 and long.times[1500] == pytest.approx(30.0)
    with pytest.raises(ClmerError, match="Whisper's encoder sees at most 30 s"):
        get_extractor("whisper_encoder")(zoo / Z.WHISPER_ID, window_seconds=40.0).load()


# --------------------------------------------------------------------------- text
def test_roberta_preset_loads_hfl_bert_checkpoints_as_bert_and_matches_mertools(zoo):
    import torch
    from transformers import AutoModel, AutoTokenizer

    ext = get_extractor("roberta")(zoo / Z.ROBERTA_ID)
    texts = ["我今天很开心", "他说：这真是太难过了！我们走吧"]
    outs = ext.extract([DecodedClip(f"t{i}", {"text": f"t{i}"}, {"text": t}, text=t) for i, t in enumerate(texts)])
    assert type(ext.model).__name__ == "BertModel" and "Bert" in type(ext.tokenizer).__name__
    model = AutoModel.from_pretrained(zoo / Z.ROBERTA_ID).eval()
    tok = AutoTokenizer.from_pretrained(zoo / Z.ROBERTA_ID, use_fast=False)
    for t, o in zip(texts, outs):  # MERTools: one sentence, no truncation, sum of last 4, [CLS]/[SEP] dropped
        enc = tok(t, return_tensors="pt")
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        ref = torch.stack(hs)[-4:].sum(dim=0)[0, 1:-1].numpy()
        np.testing.assert_allclose(o.values, ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(o.pooled, ref.mean(axis=0), rtol=1e-4, atol=1e-4)
    assert len(outs[0].values) == len(texts[0])  # one row per character, no special tokens


def test_a_folder_whose_weights_do_not_fit_is_refused(zoo, tmp_path):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(zoo / Z.ROBERTA_ID, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": cfg["num_hidden_layers"] + 1}))
    with pytest.raises(ModelNotFoundError, match="not in the checkpoint"):
        TextEncoderExtractor(bad).load()
