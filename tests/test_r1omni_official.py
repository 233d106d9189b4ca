"""R1-Omni decoding as the official inference does it: 2048 new tokens, the checkpoint's
generation_config.json, 10 s of silence for a clip without audio, the slow tokenizer's ids."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from clmer_features.errors import ClmerError
from clmer_fusion.r1omni.decode import R1OmniDecoder, build_prompt, prompt_ids, read_generation_config
from clmer_fusion.r1omni.defaults import DEFAULT_INSTRUCTION, DEFAULT_MAX_NEW_TOKENS
from clmer_fusion.r1omni.load import load_r1omni
from clmer_fusion.r1omni.testing import build_tiny_r1omni

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_r1omni(tmp_path_factory.mktemp("tiny_official"))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(2, 8, 16, 24)).astype(np.float16), rng.normal(size=(2, 500, 20)).astype(np.float16))


def _reference(dec, vision, audio, steps, penalty):
    """Greedy by full recompute with HF's own repetition-penalty processor over the generated ids."""
    from transformers import RepetitionPenaltyLogitsProcessor

    m = dec.model
    v = m.project_video(torch.as_tensor(vision), dec.gate())
    a = m.project_audio(torch.as_tensor(audio))
    embeds = m.embed_prompt(dec.ids(("video", "audio")), v, a)
    proc = RepetitionPenaltyLogitsProcessor(penalty)
    out = torch.zeros((embeds.shape[0], 0), dtype=torch.long)
    with torch.no_grad():
        for _ in range(steps):
            full = torch.cat([embeds, m.lm.get_input_embeddings()(out)], 1)
            scores = m.lm(inputs_embeds=full).logits[:, -1, :]
            nxt = proc(out, scores.clone()).argmax(-1)
            out = torch.cat([out, nxt[:, None]], 1)
    return out.tolist()


def test_defaults_follow_the_official_inference(tiny):
    assert DEFAULT_MAX_NEW_TOKENS == 2048
    dec = R1OmniDecoder(load_r1omni(tiny.model_dir))
    assert dec.max_new_tokens == 2048 and dec.generation.source == "none"


def test_generation_config_repetition_penalty_as_hf_generate_applies_it(tiny, tmp_path):
    model_dir = tmp_path / "r1omni"
    shutil.copytree(tiny.model_dir, model_dir)
    (model_dir / "generation_config.json").write_text(json.dumps(
        {"repetition_penalty": 1.8, "do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20}))
    loaded = load_r1omni(model_dir)
    dec = R1OmniDecoder(loaded, max_new_tokens=12)
    assert dec.generation.repetition_penalty == 1.8 and dec.generation.ignored["temperature"] == 0.7
    dec.stop_ids = {-1}                               # compare whole 12-token rows
    vision, audio = _inputs()
    got = [g.tokens for g in dec.decode(vision, audio)]
    assert got == _reference(dec, vision, audio, 12, 1.8)
    plain = R1OmniDecoder(loaded, max_new_tokens=12, generation=read_generation_config(tiny.model_dir))
    plain.stop_ids = {-1}
    assert [g.tokens for g in plain.decode(vision, audio)] != got          # the penalty changed the answer
    assert all(len(set(t)) < len(t) for t in [g.tokens for g in plain.decode(vision, audio)])


def test_generation_config_keys_greedy_cannot_honour_are_refused(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"no_repeat_ngram_size": 3}))
    with pytest.raises(ClmerError, match="no_repeat_ngram_size=3 is not supported"):
        read_generation_config(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9], "num_beams": 1}))
    assert read_generation_config(tmp_path).eos_token_ids == (7, 9)


def test_slow_tokenizer_files_give_the_same_ids_as_tokenizer_json(tiny, tmp_path):
    loaded = load_r1omni(tiny.model_dir)
    assert "use_fast=False" in loaded.report.tokenizer
    only_slow = tmp_path / "slow"
    shutil.copytree(tiny.model_dir, only_slow)
    (only_slow / "tokenizer.json").unlink()             # nothing but vocab.json + merges.txt to build from
    from transformers import AutoTokenizer

    slow = AutoTokenizer.from_pretrained(str(only_slow), use_fast=False)
    fast = AutoTokenizer.from_pretrained(str(tiny.model_dir))
    for instruction in (DEFAULT_INSTRUCTION, "Which emotion? Answer in <answer></answer>, 请用中文."):
        for mods in (("video", "audio"), ("video",)):
            ids = [prompt_ids(t, build_prompt(t, instruction, mods)) for t in (slow, fast, loaded.tokenizer)]
            assert ids[0] == ids[1] == ids[2]
    assert slow.decode(list(range(40, 90))) == fast.decode(list(range(40, 90)))


def test_silence_equals_the_extractor_on_ten_seconds_of_silence(tiny):
    from clmer_features.extractors.r1omni import R1OmniAudioExtractor, whisper_pooled
    from clmer_fusion.r1omni.silence import silence_features

    ext = R1OmniAudioExtractor(tiny.whisper_dir, device="cpu")
    ext.load()
    want = whisper_pooled(ext._encoder, ext._fe, [np.zeros(160000, np.float32)]).astype(np.float16)[0]
    got = silence_features(tiny.whisper_dir, ext.spec())
    assert got.shape == (500, 20) and np.array_equal(got, want)
    other = build_tiny_r1omni(tiny.root / "other", seed=3)
    with pytest.raises(ClmerError, match="are not the ones that made r1omni_audio"):
        silence_features(other.whisper_dir, ext.spec())
