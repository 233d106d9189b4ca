"""Tiny random models of every class the feature zoo loads, saved like their hub repos.

Each builder makes the *real* transformers class of the checkpoint a preset
names (the hub's architecture, e.g. ``Wav2Vec2ForCTC`` for
facebook/wav2vec2-large-960h, a BERT masked-LM for hfl's "roberta"), from a
small config, with the files the hub repo ships (processor configs, vocab,
``pytorch_model.bin`` where the hub has no safetensors) at ``root/<hub id>``.
Tests then load them through the same code path as real folders.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from clmer_features.models import quiet_transformers

CLIP_ID = "openai/clip-vit-large-patch14"
CLIP_B32_ID = "openai/clip-vit-base-patch32"
DINOV2_ID = "facebook/dinov2-large"
VIDEOMAE_ID = "MCG-NJU/videomae-base"
HUBERT_ID = "TencentGameMate/chinese-hubert-large"
WAV2VEC2_ID = "facebook/wav2vec2-large-960h"
WAVLM_ID = "microsoft/wavlm-large"
WHISPER_ID = "openai/whisper-large-v3"
ROBERTA_ID = "hfl/chinese-roberta-wwm-ext-large"
MACBERT_ID = "hfl/chinese-macbert-large"
SBERT_ID = "sentence-transformers/all-mpnet-base-v2"

_VISION = dict(num_hidden_layers=4, num_attention_heads=4)


def _out(root: str | Path, hub_id: str) -> Path:
    out = Path(root) / hub_id
    out.mkdir(parents=True, exist_ok=True)
    return out


def _save(model: Any, out: Path, *, safetensors: bool = True, legacy_weight_norm: bool = False) -> None:
    """``model`` saved at ``out``; ``safetensors=False`` writes ``pytorch_model.bin`` only (as hub repos
    from before safetensors ship); ``legacy_weight_norm`` names weight-norm tensors ``weight_g`` /
    ``weight_v``, as older checkpoints do (transformers renames them at load)."""
    quiet_transformers()
    model.eval().save_pretrained(out)
    if safetensors:
        return
    import torch
    from safetensors.torch import load_file

    state = load_file(str(out / "model.safetensors"))
    if legacy_weight_norm:
        state = {k.replace(".parametrizations.weight.original0", ".weight_g")
                  .replace(".parametrizations.weight.original1", ".weight_v"): v for k, v in state.items()}
    torch.save(state, out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- vision
def make_tiny_clip(root: str | Path, *, hub_id: str = CLIP_ID, image_size: int = 32, seed: int = 0) -> Path:
    """CLIPModel (text and vision towers, projections) + a CLIP image processor, like openai/clip-*."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    out = _out(root, hub_id)
    _seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0),
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64, **_VISION),
        projection_dim=24,
    )
    _save(CLIPModel(cfg), out)
    CLIPImageProcessorPil(size={"shortest_edge": image_size},
                          crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


def make_tiny_dinov2(root: str | Path, *, hub_id: str = DINOV2_ID, image_size: int = 32, seed: int = 0) -> Path:
    """Dinov2Model + its BitImageProcessor (resize shortest edge, center crop), like facebook/dinov2-*."""
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    out = _out(root, hub_id)
    _seed(seed)
    cfg = Dinov2Config(image_size=image_size, patch_size=8, hidden_size=32, mlp_ratio=2, **_VISION)
    _save(Dinov2Model(cfg), out)
    BitImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                         do_convert_rgb=True, image_mean=[0.485, 0.456, 0.406],
                         image_std=[0.229, 0.224, 0.225]).save_pretrained(out)
    return out


def make_tiny_vit(root: str | Path, *, hub_id: str = "google/vit-base-patch16-224-in21k", image_size: int = 32,
                  seed: int = 0) -> Path:
    """ViTModel (with its pooler) + ViTImageProcessor, like google/vit-*."""
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    out = _out(root, hub_id)
    _seed(seed)
    cfg = ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64, **_VISION)
    _save(ViTModel(cfg), out)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


def make_tiny_videomae(root: str | Path, *, hub_id: str = VIDEOMAE_ID, image_size: int = 32, frames: int = 16,
                       seed: int = 0) -> Path:
    """VideoMAEForPreTraining (encoder + decoder, as MCG-NJU ships it) + VideoMAEImageProcessor."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEImageProcessorPil

    out = _out(root, hub_id)
    _seed(seed)
    cfg = VideoMAEConfig(image_size=image_size, patch_size=8, num_frames=frames, tubelet_size=2, hidden_size=32,
                         intermediate_size=64, decoder_hidden_size=16, decoder_intermediate_size=32,
                         decoder_num_attention_heads=4, decoder_num_hidden_layers=1, use_mean_pooling=False,
                         **_VISION)
    _save(VideoMAEForPreTraining(cfg), out)
    VideoMAEImageProcessorPil(size={"shortest_edge": image_size},
                              crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- speech
def _speech_cfg(conv_channels: int = 16, **kw: Any) -> dict[str, Any]:
    return dict(hidden_size=32, num_hidden_layers=5, num_attention_heads=4, intermediate_size=64,
                conv_dim=(conv_channels,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2),
                conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                vocab_size=32, **kw)


def _save_w2v_extractor(out: Path, *, return_attention_mask: bool) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=return_attention_mask).save_pretrained(out)


def make_tiny_hubert(root: str | Path, *, hub_id: str = HUBERT_ID, conv_channels: int = 16, seed: int = 0) -> Path:
    """HubertModel in the large layout (layer-norm feature encoder, stable layer norm), weights in
    ``pytorch_model.bin`` only and a Wav2Vec2FeatureExtractor, as TencentGameMate/chinese-hubert-large.
    ``conv_channels=512``: the feature encoder at its real width (for memory measurements)."""
    from transformers import HubertConfig, HubertModel

    out = _out(root, hub_id)
    _seed(seed)
    cfg = HubertConfig(**_speech_cfg(conv_channels, feat_extract_norm="layer", do_stable_layer_norm=True))
    _save(HubertModel(cfg), out, safetensors=False, legacy_weight_norm=True)
    _save_w2v_extractor(out, return_attention_mask=True)
    return out



def make_tiny_wav2vec2(root: str | Path, *, hub_id: str = WAV2VEC2_ID, seed: int = 0) -> Path:
    """Wav2Vec2ForCTC + a Wav2Vec2Processor (feature extractor and character vocab), as
    facebook/wav2vec2-large-960h (group-norm feature encoder: batches must not pad)."""
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC

    out = _out(root, hub_id)
    _seed(seed)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4,
             **{c: i + 5 for i, c in enumerate("ETAONISRHDLUMWCFGYPBVKXJQZ'")}}
    cfg = Wav2Vec2Config(**_speech_cfg(feat_extract_norm="group", do_stable_layer_norm=False))
    cfg.vocab_size = len(vocab)
    _save(Wav2Vec2ForCTC(cfg), out)
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    Wav2Vec2CTCTokenizer(str(out / "vocab.json")).save_pretrained(out)
    _save_w2v_extractor(out, return_attention_mask=False)
    return out


def make_tiny_wavlm(root: str | Path, *, hub_id: str = WAVLM_ID, seed: int = 0) -> Path:
    """WavLMModel (large layout, relative position buckets) + Wav2Vec2FeatureExtractor."""
    from transformers import WavLMConfig, WavLMModel

    out = _out(root, hub_id)
    _seed(seed)
    cfg = WavLMConfig(**_speech_cfg(feat_extract_norm="layer", do_stable_layer_norm=True, num_buckets=16,
                                    max_bucket_distance=64))
    _save(WavLMModel(cfg), out)
    _save_w2v_extractor(out, return_attention_mask=True)
    return out


def make_tiny_data2vec_audio(root: str | Path, *, hub_id: str = "facebook/data2vec-audio-base", seed: int = 0) -> Path:
    """Data2VecAudioModel + Wav2Vec2FeatureExtractor."""
    from transformers import Data2VecAudioConfig, Data2VecAudioModel

    out = _out(root, hub_id)
    _seed(seed)
    cfg = Data2VecAudioConfig(**_speech_cfg())
    _save(Data2VecAudioModel(cfg), out)
    _save_w2v_extractor(out, return_attention_mask=True)
    return out


def make_tiny_whisper(root: str | Path, *, hub_id: str = WHISPER_ID, mel_bins: int = 128, seed: int = 0) -> Path:
    """WhisperForConditionalGeneration with 128 mel bins and 1500 encoder positions (30 s windows),
    + WhisperFeatureExtractor, as openai/whisper-large-v3."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    out = _out(root, hub_id)
    _seed(seed)
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=mel_bins, d_model=32, encoder_layers=4, decoder_layers=1,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=32,
                        decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    _save(WhisperForConditionalGeneration(cfg), out)
    WhisperFeatureExtractor(feature_size=mel_bins).save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- text
_ZH = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首单据导影失拿网香似斯专石若兵弟谁校读志飞观争究包组造落视济喜离虽坏兴急乐愤怒悲伤惊讶厌恶恐惧开心难过高兴生气害怕"


def make_tiny_chinese_bert(root: str | Path, *, hub_id: str = ROBERTA_ID, seed: int = 0) -> Path:
    """A BERT masked-LM with a Chinese character vocab, as hfl ships its "roberta"/macbert:
    ``model_type: bert``, ``BertForMaskedLM``, ``tokenizer_config.json`` of just ``{"init_inputs": []}``
    (so the tokenizer class must come from config.json), weights in ``pytorch_model.bin``."""
    from transformers import BertConfig, BertForMaskedLM

    out = _out(root, hub_id)
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789,.!?'，。！？")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(list(_ZH) + letters),
             *[f"##{c}" for c in letters]]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text('{"init_inputs": []}', encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
         "mask_token": "[MASK]"}), encoding="utf-8")
    _seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=5, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
                     architectures=["BertForMaskedLM"])
    _save(BertForMaskedLM(cfg), out, safetensors=False)
    return out


def make_tiny_sbert(root: str | Path, *, hub_id: str = SBERT_ID, pooling: str = "mean", normalize: bool = True,
                    seed: int = 0) -> Path:
    """A sentence-transformers folder (modules.json, 1_Pooling/config.json, optional 2_Normalize)
    around a tiny BertModel, laid out like sentence-transformers/all-*."""
    from clmer_features.testing import make_tiny_bert

    out = make_tiny_bert(root, hub_id=hub_id, seed=seed)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}),
                                                    encoding="utf-8")
    (out / "1_Pooling").mkdir(exist_ok=True)
    modes = {"cls_token": pooling == "cls", "mean_tokens": pooling == "mean", "max_tokens": pooling == "max",
             "mean_sqrt_len_tokens": pooling == "mean_sqrt_len"}
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, **{f"pooling_mode_{k}": v for k, v in modes.items()}}, indent=2),
        encoding="utf-8")
    return out


# Every preset's tiny builder, by hub id (what `--models-dir` finds).
BUILDERS: dict[str, Callable[..., Path]] = {
    CLIP_ID: make_tiny_clip,
    DINOV2_ID: make_tiny_dinov2,
    VIDEOMAE_ID: make_tiny_videomae,
    HUBERT_ID: make_tiny_hubert,
    "TencentGameMate/chinese-hubert-base": make_tiny_hubert,
    WAV2VEC2_ID: make_tiny_wav2vec2,
    WAVLM_ID: make_tiny_wavlm,
    WHISPER_ID: make_tiny_whisper,
    ROBERTA_ID: make_tiny_chinese_bert,
    MACBERT_ID: make_tiny_chinese_bert,
    SBERT_ID: make_tiny_sbert,
}


def make_zoo(root: str | Path, hub_ids: list[str] | None = None) -> Path:
    """Tiny models for ``hub_ids`` (default: every preset's) under ``root``, laid out like hub repos."""
    for hub_id in hub_ids or list(BUILDERS):
        BUILDERS[hub_id](root, hub_id=hub_id)
    return Path(root)
