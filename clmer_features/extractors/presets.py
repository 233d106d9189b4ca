"""Named presets: the checkpoints the MER baselines use, each a family plus its defaults.

Each preset is a feature (its store folder), the hub id looked up under
``--models-dir`` and parameter defaults; ``--model NAME=DIR`` points it at any
compatible folder (``clip`` serves openai/clip-vit-base-patch32 so) and
``--param NAME.x=...`` changes any default. The defaults follow MERTools'
extraction scripts (MERBench and the MER2023-2026 baselines), so a cache
compares with their published tables:

- vision: the projected CLIP embedding, DINOv2's token *sum* of
  ``hidden_states[-1]`` over 64 evenly spread frames, VideoMAE's 16-frame clip
  with its 8 tubelet rows;
- speech: the sum of the last 4 hidden states, 10 s windows (MERTools also
  keeps the rows of the last window's zero padding: ``tail=keep``);
- text: the sum of the last 4 hidden states, special tokens dropped.

Where the cache differs from MERTools by design: frames are those the engine
decodes (every 2 s for clip, shared with siglip so they are decoded once; MERTools
feeds every OpenFace face crop), ``tail=drop`` (rows past the audio's end carry
no audio), texts are cut at 512 tokens (MERTools crashes there), and
whisper_encoder is Whisper's *encoder* (MERTools' Whisper feature is the
decoder state of two start tokens). ``clmer-features features`` lists them all.
"""
from __future__ import annotations

from clmer_features.extractors.base import register_preset
from clmer_features.extractors.hf_speech import SpeechExtractor
from clmer_features.extractors.hf_text import TextEncoderExtractor
from clmer_features.extractors.hf_video import VideoClipsExtractor
from clmer_features.extractors.hf_vision import VisionFramesExtractor

MERTOOLS_SPEECH = {"layer": "sum_last4", "window_seconds": 10.0}
MERTOOLS_TEXT = {"layer": "sum_last4", "special_tokens": "drop", "pooled": "mean"}

register_preset(
    "clip", VisionFramesExtractor, default_model="openai/clip-vit-large-patch14",
    params={"output": "image_features"},
    help="CLIP image embedding (get_image_features, projected, not normalised) per frame every 2 s; "
         "MERTools' top visual feature. Also serves openai/clip-vit-base-patch32 via --model clip=DIR.",
    output="[frames, 768] (512 for B/32) every 2 s with times + pooled [768]",
)
register_preset(
    "dinov2", VisionFramesExtractor, default_model="facebook/dinov2-large",
    params={"output": "sum", "layer": "-1", "frame_count": 64},
    help="DINOv2: sum over all tokens of hidden_states[-1] (before the final norm) for 64 evenly spread "
         "frames, as MERTools.",
    output="[64, 1024] with times + pooled [1024]",
)
register_preset(
    "videomae", VideoClipsExtractor, default_model="MCG-NJU/videomae-base",
    params={"frame_count": 16, "clip_count": 1, "rows": "tubelets"},
    help="VideoMAE encoder on 16 evenly spread frames as one clip; one row per tubelet step (patch mean), "
         "as MERTools.",
    output="[8, 768] with times + pooled [768]",
)
register_preset(
    "hubert", SpeechExtractor, default_model="TencentGameMate/chinese-hubert-large", params=MERTOOLS_SPEECH,
    help="Chinese HuBERT-large: sum of the last 4 hidden states, 10 s windows; MERTools' top audio feature.",
    output="[frames, 1024] at 50 rows/s with times + pooled [1024]",
)
register_preset(
    "hubert_base", SpeechExtractor, default_model="TencentGameMate/chinese-hubert-base", params=MERTOOLS_SPEECH,
    help="Chinese HuBERT-base: sum of the last 4 hidden states, 10 s windows; MER2026's top audio feature.",
    output="[frames, 768] at 50 rows/s with times + pooled [768]",
)
register_preset(
    "wav2vec2", SpeechExtractor, default_model="facebook/wav2vec2-large-960h", params=MERTOOLS_SPEECH,
    help="wav2vec2-large-960h encoder (CTC head unused): sum of the last 4 hidden states, 10 s windows.",
    output="[frames, 1024] at 50 rows/s with times + pooled [1024]",
)
register_preset(
    "wavlm", SpeechExtractor, default_model="microsoft/wavlm-large", params=MERTOOLS_SPEECH,
    help="WavLM-large: sum of the last 4 hidden states, 10 s windows.",
    output="[frames, 1024] at 50 rows/s with times + pooled [1024]",
)
register_preset(
    "whisper_encoder", SpeechExtractor, default_model="openai/whisper-large-v3",
    params={"layer": "last", "window_seconds": 30.0},
    help="Whisper-large-v3 encoder output in 30 s windows (128 mel bins), rows of the audio only.",
    output="[frames, 1280] at 50 rows/s with times + pooled [1280]",
)
register_preset(
    "roberta", TextEncoderExtractor, default_model="hfl/chinese-roberta-wwm-ext-large", params=MERTOOLS_TEXT,
    help="hfl Chinese RoBERTa-wwm-ext-large (a BERT checkpoint, loaded as BERT): sum of the last 4 "
         "hidden states per token, special tokens dropped; text from the manifest or asr.",
    output="[tokens, 1024] + pooled [1024] (mean over tokens)",
)
register_preset(
    "macbert", TextEncoderExtractor, default_model="hfl/chinese-macbert-large", params=MERTOOLS_TEXT,
    help="hfl Chinese MacBERT-large (a BERT checkpoint): sum of the last 4 hidden states per token, "
         "special tokens dropped; text from the manifest or asr.",
    output="[tokens, 1024] + pooled [1024] (mean over tokens)",
)
