"""Tiny random R1-Omni-like models for tests and benchmarks (nothing downloaded).

``build_tiny_r1omni(root)`` writes three folders laid out like the real ones:

- ``root/r1omni``: ``config.json`` (``model_type`` ``HumanOmni_qwen2``),
  ``model.safetensors`` with R1-Omni's key names (LLM, ``mm_projector``,
  ``audio_projector``, ``bert_model``, ``bert_gate``, plus tower tensors
  under ``model.vision_tower.``/``model.audio_tower.`` that loading must skip),
  a byte-level tokenizer with a ChatML template, and ``bert/`` (BERT config +
  vocab.txt for the gate's tokenizer);
- ``root/siglip``: a tiny ``SiglipVisionModel`` + image processor;
- ``root/whisper``: a tiny Whisper (128 mel bins, 1500 encoder positions) +
  feature extractor.

Running the towers on decoded clips (the on-the-fly path that tests and the
benchmark compare the cache with) is ``clmer_features.testing.OnTheFlyTowers``:
the decoding package never imports a tower or ``clmer_features``' extractors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from clmer_fusion.r1omni.model import R1OmniConfig, R1OmniModel

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED = ["<vi_start>", "<vi_end>", "<au_start>", "<au_end>", "<think>", "</think>", "<answer>", "</answer>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySizes:
    """Dimensions of the tiny models (real R1-Omni in comments)."""

    hidden: int = 32  # 896
    layers: int = 2  # 24
    heads: int = 4  # 14
    kv_heads: int = 2  # 2
    vision_dim: int = 24  # 768
    image_size: int = 32  # 224
    patch: int = 8  # 16 -> 4x4 = 16 tokens a frame (196)
    audio_dim: int = 20  # 1280
    bert_hidden: int = 16  # 768
    gate_hidden: int = 24  # 3584


@dataclass(frozen=True)
class TinyR1Omni:
    root: Path
    model_dir: Path
    siglip_dir: Path
    whisper_dir: Path


def _tokenizer(path: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL})
    fast.add_tokens(ADDED)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    # the files the official inference's slow tokenizer (use_fast=False) reads, as Qwen2 ships them
    (path / "vocab.json").write_text(json.dumps(tok.get_vocab()), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    cfg = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg["added_tokens_decoder"] = {
        str(fast.convert_tokens_to_ids(t)): {"content": t, "special": t in SPECIAL, "lstrip": False, "rstrip": False,
                                             "normalized": False, "single_word": False}
        for t in SPECIAL + ADDED}
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return len(fast)


def _bert_vocab(path: Path) -> int:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *[f"##{c}" for c in letters],
             *list(".,;:?!<>/'\"()-"), *[str(d) for d in range(10)]]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return len(words)


def _towers(root: Path, s: TinySizes, seed: int) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    from transformers import (
        SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel,
        WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
    )

    torch.manual_seed(seed + 1)
    sig_dir, wh_dir = root / "siglip", root / "whisper"
    vcfg = SiglipVisionConfig(hidden_size=s.vision_dim, intermediate_size=2 * s.vision_dim, num_hidden_layers=3,
                              num_attention_heads=2, image_size=s.image_size, patch_size=s.patch)
    siglip = SiglipVisionModel(vcfg).eval()
    siglip.save_pretrained(str(sig_dir))
    SiglipImageProcessor(size={"height": s.image_size, "width": s.image_size}).save_pretrained(str(sig_dir))
    wcfg = WhisperConfig(vocab_size=64, num_mel_bins=128, d_model=s.audio_dim, encoder_layers=2, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * s.audio_dim,
                         decoder_ffn_dim=2 * s.audio_dim, max_source_positions=1500, max_target_positions=32,
                         decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    whisper = WhisperForConditionalGeneration(wcfg).eval()
    whisper.save_pretrained(str(wh_dir))
    WhisperFeatureExtractor(feature_size=128).save_pretrained(str(wh_dir))
    towers = {f"model.vision_tower.vision_tower.vision_model.{k}": v for k, v in siglip.state_dict().items()}
    towers.update({f"model.audio_tower.audio_tower.encoder.{k}": v
                   for k, v in whisper.model.encoder.state_dict().items()})
    return sig_dir, wh_dir, towers


def _randomize(model: torch.nn.Module) -> None:
    """Weights that make the tiny LLM's tokens depend on the clip's features:
    unit norms, sharp attention (query/key std 1), other matrices std 0.3."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "norm" in name.lower() or ".bn." in name
            if p.ndim == 1 and is_norm:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif p.ndim == 1:
                p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, 1.0 if ("q_proj" in name or "k_proj" in name) else 0.3)


def build_tiny_r1omni(root: str | Path, seed: int = 0, sizes: TinySizes = TinySizes()) -> TinyR1Omni:
    """Write a tiny random R1-Omni checkpoint and its two towers under ``root``."""
    from safetensors.torch import save_file
    from transformers import BertConfig, Qwen2Config

    root = Path(root)
    model_dir = root / "r1omni"
    model_dir.mkdir(parents=True, exist_ok=True)
    s = sizes
    vocab = _tokenizer(model_dir)
    bert_vocab = _bert_vocab(model_dir / "bert")
    bert_cfg = BertConfig(vocab_size=bert_vocab, hidden_size=s.bert_hidden, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=2 * s.bert_hidden, max_position_embeddings=128)
    bert_cfg.save_pretrained(str(model_dir / "bert"))
    config = {
        "model_type": "HumanOmni_qwen2", "architectures": ["HumanOmniQwen2ForCausalLM"],
        "vocab_size": vocab + 5, "hidden_size": s.hidden, "intermediate_size": 2 * s.hidden,
        "num_hidden_layers": s.layers, "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads,
        "max_position_embeddings": 4096, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "hidden_act": "silu",
        "mm_hidden_size": s.vision_dim, "audio_hidden_size": s.audio_dim,
        "mm_projector_type": "all_in_one_small", "mm_audio_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "mm_use_x_start_end": True, "num_frames": 8,
        "mm_vision_tower": "google/siglip-base-patch16-224", "mm_audio_tower": "openai/whisper-large-v3",
    }
    (model_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    qcfg = Qwen2Config(**{k: v for k, v in config.items() if k not in ("model_type", "architectures")})
    torch.manual_seed(seed)
    model = R1OmniModel(R1OmniConfig.from_json(config, gate_hidden=s.gate_hidden), qcfg, bert_cfg)
    _randomize(model)
    sig_dir, wh_dir, towers = _towers(root, s, seed)
    state = {k: v.contiguous() for k, v in model.lm.state_dict().items() if k != "lm_head.weight"}
    state.update({k: v.contiguous() for k, v in towers.items()})
    save_file(state, str(model_dir / "model.safetensors"))
    return TinyR1Omni(root=root, model_dir=model_dir, siglip_dir=sig_dir, whisper_dir=wh_dir)
