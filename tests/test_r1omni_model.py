"""R1-Omni model pieces: projector shapes, checkpoint keys, loading checks, gate, greedy decoding."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clmer_features.errors import ModelNotFoundError
from clmer_fusion.r1omni.decode import R1OmniDecoder, build_prompt, prompt_ids
from clmer_fusion.r1omni.load import CheckpointMismatchError, load_r1omni
from clmer_fusion.r1omni.model import AUDIO_SLOT, VIDEO_SLOT
from clmer_fusion.r1omni.projectors import AllInOneSmall, mlp
from clmer_fusion.r1omni.testing import build_tiny_r1omni


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_r1omni(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def loaded(tiny):
    return load_r1omni(tiny.model_dir)


def _features(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 8, 16, 24)).astype(np.float16),
            rng.standard_normal((batch, 500, 20)).astype(np.float16))


def test_full_size_projector_shapes_and_key_names():
    torch.manual_seed(0)
    proj = AllInOneSmall(768, 896)
    keys = {k: tuple(v.shape) for k, v in proj.state_dict().items()}
    # names and shapes a released checkpoint has under model.mm_projector.
    assert keys["s1_video.b1.conv1.conv.weight"] == (896, 768, 1, 1)
    assert keys["s1_video.b1.conv2.conv.weight"] == (896, 1, 3, 3)  # depthwise
    assert keys["s1_video.b1.se.fc1.weight"] == (192, 896, 1, 1)  # 768 * 0.25
    assert keys["s1_video.b2.se.fc1.weight"] == (224, 896, 1, 1)  # 896 * 0.25
    assert keys["s1_video.b1.downsample.conv.weight"] == (896, 768, 1, 1)
    assert "s1_video.b2.downsample.conv.weight" not in keys  # identity shortcut
    assert keys["s1_body.b1.conv3.bn.weight"] == (896,)
    assert keys["sampler_video.0.weight"] == (896, 896, 2, 2, 2)
    assert keys["readout_body.2.weight"] == (896, 896)
    assert keys["mlp_2xgelu_face.0.weight"] == (896, 768)
    with torch.no_grad():
        out = proj(torch.randn(1, 8, 196, 768), torch.tensor([[0.2, 0.3, 0.5]]))
    assert out.shape == (1, 392, 896) and AllInOneSmall.tokens_out(8, 196) == 392
    audio = mlp(1280, 896)
    assert audio(torch.randn(1, 500, 1280)).shape == (1, 500, 896)
    assert [k for k in audio.state_dict()] == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_gate_mixes_branches_linearly():
    torch.manual_seed(1)
    proj = AllInOneSmall(8, 12).eval()
    x = torch.randn(2, 8, 16, 8)
    with torch.no_grad():
        one_hot = [proj(x, torch.eye(3)[i].expand(2, 3)) for i in range(3)]
        w = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
        mixed = proj(x, w)
    expect = sum(one_hot[i] * w[:, i, None, None] for i in range(3))
    torch.testing.assert_close(mixed, expect, rtol=1e-5, atol=1e-5)


def test_checkpoint_keys_are_r1omni_names(tiny, loaded):
    from safetensors import safe_open

    with safe_open(str(tiny.model_dir / "model.safetensors"), framework="pt") as fh:
        keys = set(fh.keys())
    for k in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight",
              "model.mm_projector.s1_video.b1.conv1.conv.weight", "model.audio_projector.0.weight",
              "model.bert_model.embeddings.word_embeddings.weight", "model.bert_gate.2.weight"):
        assert k in keys, k
    assert any(k.startswith("model.vision_tower.vision_tower.vision_model.") for k in keys)
    assert any(k.startswith("model.audio_tower.audio_tower.encoder.") for k in keys)
    rep = loaded.report
    assert rep.ok and rep.tied_lm_head
    assert rep.tower_keys_skipped == sum(k.startswith(("model.vision_tower.", "model.audio_tower.")) for k in keys)
    assert rep.n_loaded == len(keys) - rep.tower_keys_skipped
    # no tower module is ever built
    names = {n for n, _ in loaded.model.named_modules()}
    assert not any("vision_tower" in n or "audio_tower" in n for n in names)


def _rewrite(tiny, tmp_path, edit):
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "ckpt"
    shutil.copytree(tiny.model_dir, d)
    state = load_file(str(d / "model.safetensors"))
    edit(state)
    save_file(state, str(d / "model.safetensors"))
    return d


def test_missing_and_unexpected_keys_are_refused_unless_allowed(tiny, tmp_path):
    def edit(state):
        del state["model.bert_gate.0.weight"]
        state["model.mm_projector.extra.weight"] = torch.zeros(2)

    d = _rewrite(tiny, tmp_path, edit)
    with pytest.raises(CheckpointMismatchError) as err:
        load_r1omni(d)
    msg = str(err.value)
    assert "1 missing: model.bert_gate.0.weight" in msg
    assert "1 unexpected: model.mm_projector.extra.weight" in msg and "--allow-mismatch" in msg
    got = load_r1omni(d, allow_mismatch=True)
    assert got.report.missing == ["model.bert_gate.0.weight"]
    assert got.report.unexpected == ["model.mm_projector.extra.weight"]


def test_wrong_shape_is_refused(tiny, tmp_path):
    def edit(state):
        state["model.audio_projector.2.bias"] = torch.zeros(7)

    d = _rewrite(tiny, tmp_path, edit)
    with pytest.raises(CheckpointMismatchError, match=r"wrong shape: model.audio_projector.2.bias \(7,\)"):
        load_r1omni(d)


def test_missing_bert_tokenizer_and_foreign_projector_are_clear(tiny, tmp_path):
    import shutil

    d = tmp_path / "nobert"
    shutil.copytree(tiny.model_dir, d)
    shutil.rmtree(d / "bert")
    with pytest.raises(ModelNotFoundError, match="--bert"):
        load_r1omni(d)
    assert load_r1omni(d, bert_dir=tiny.model_dir / "bert").report.ok
    cfg = json.loads((d / "config.json").read_text())
    cfg["mm_projector_type"] = "stc_connector"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="stc_connector"):
        load_r1omni(d, bert_dir=tiny.model_dir / "bert")


def test_prompt_layout(loaded):
    tok = loaded.tokenizer
    text = build_prompt(tok, "Which emotion?", ("video", "audio"))
    assert "<|im_start|>user\n<vi_start><video><vi_end>\n<au_start><audio><au_end>\nWhich emotion?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    ids = prompt_ids(tok, text)
    assert ids.count(VIDEO_SLOT) == 1 and ids.count(AUDIO_SLOT) == 1
    assert ids.index(VIDEO_SLOT) < ids.index(AUDIO_SLOT)
    vi_start = tok.convert_tokens_to_ids("<vi_start>")
    assert ids[ids.index(VIDEO_SLOT) - 1] == vi_start


def test_gate_runs_once_per_instruction(loaded):
    calls = []
    hook = loaded.model.inner.bert_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        dec = R1OmniDecoder(loaded, "Which emotion?", max_new_tokens=3)
        v, a = _features(2)
        dec.decode(v, a)
        dec.decode(v, a)
        assert len(calls) == 1 and dec.gate_calls == 1
        w = dec.gate()
        assert w.shape == (1, 3) and abs(float(w.sum()) - 1.0) < 1e-6
    finally:
        hook.remove()


def test_batched_equals_one_by_one_and_kv_cache_equals_full_recompute(loaded):
    import warnings

    dec = R1OmniDecoder(loaded, "Which emotion?", max_new_tokens=6)
    v, a = _features(3, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # e.g. transformers' past_key_values deprecation
        batched = [g.tokens for g in dec.decode(v, a)]
    single = [dec.decode(v[i : i + 1], a[i : i + 1])[0].tokens for i in range(3)]
    assert batched == single
    # greedy without a cache: feed the whole sequence at every step
    model = loaded.model
    with torch.no_grad():
        emb = model.embed_prompt(dec.ids(("video", "audio")), model.project_video(torch.as_tensor(v[:1]), dec.gate()),
                                 model.project_audio(torch.as_tensor(a[:1])))
        toks: list[int] = []
        for _ in range(len(batched[0])):
            logits = model.lm(inputs_embeds=emb, use_cache=False).logits[0, -1]
            nxt = int(logits.argmax())
            toks.append(nxt)
            emb = torch.cat([emb, model.inner.embed_tokens(torch.tensor([[nxt]]))], dim=1)
    assert toks == batched[0]


def test_video_only_and_audio_only_prompts(loaded):
    dec = R1OmniDecoder(loaded, "Which emotion?", max_new_tokens=2)
    v, a = _features(1)
    assert len(dec.decode(v, None)[0].tokens) == 2
    assert len(dec.decode(None, a)[0].tokens) == 2
    assert AUDIO_SLOT not in dec.ids(("video",)) and VIDEO_SLOT not in dec.ids(("audio",))
    with pytest.raises(ValueError, match="video or audio"):
        dec.decode(None, None)


def test_decoding_path_never_imports_a_tower(tiny):
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from clmer_fusion.r1omni import cli, run\n"
        "from clmer_fusion.r1omni.load import load_r1omni\n"
        "from clmer_fusion.r1omni.decode import R1OmniDecoder\n"
        f"dec = R1OmniDecoder(load_r1omni({str(tiny.model_dir)!r}), max_new_tokens=2)\n"
        "dec.decode(np.zeros((1, 8, 16, 24), np.float16), np.zeros((1, 500, 20), np.float16))\n"
        "bad = [m for m in sys.modules if m.startswith(('transformers.models.siglip', 'transformers.models.whisper',"
        " 'clmer_features.extractors', 'clmer_features.engine', 'clmer_features.media', 'decord', 'funasr'))]\n"
        "print('BAD', bad)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "BAD []" in res.stdout, res.stdout


def test_skipping_random_init_changes_nothing(tiny, loaded):
    """The loader skips weight init when every key must come from the checkpoint: same numbers."""
    slow = load_r1omni(tiny.model_dir, allow_mismatch=True)  # builds with the usual random init
    fast_state, slow_state = loaded.model.state_dict(), slow.model.state_dict()
    assert fast_state.keys() == slow_state.keys()
    for k in fast_state:
        assert torch.equal(fast_state[k], slow_state[k]), k
    for (n, a), (_, b) in zip(loaded.model.named_buffers(), slow.model.named_buffers()):
        assert torch.equal(a, b), n


def test_sharded_checkpoint_with_old_buffers_loads(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "sharded"
    shutil.copytree(tiny.model_dir, d)
    state = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    keys = sorted(state)
    half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]}, str(d / "model-00001-of-00002.safetensors"))
    rest = {k: state[k] for k in keys[half:]}
    rest["model.bert_model.embeddings.position_ids"] = torch.arange(128)[None]  # saved by older transformers
    save_file(rest, str(d / "model-00002-of-00002.safetensors"))
    got = load_r1omni(d)
    assert got.report.ok and got.report.n_loaded == len(keys) - got.report.tower_keys_skipped


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (R1-Omni runs fp16 there)")
def test_decoding_on_gpu_in_fp16(tiny):
    gpu = load_r1omni(tiny.model_dir, device="cuda")
    assert gpu.model.dtype == torch.float16
    dec = R1OmniDecoder(gpu, "Which emotion?", max_new_tokens=4)
    v, a = _features(2)
    out = dec.decode(v, a)
    assert len(out) == 2 and all(len(g.tokens) <= 4 for g in out)
    assert abs(float(dec.gate().sum()) - 1.0) < 1e-3
