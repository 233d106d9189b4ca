"""R1-Omni's two towers, cached: SigLIP patch tokens and pooled Whisper frames.

R1-Omni (HumanOmni-0.5B + RLVR) spends most of its compute here; with these
two features in the store, ``clmer-fusion r1omni`` decodes from the cache.

``r1omni_vision``: the middle frame of each of 8 equal segments, resized (not
padded) by SigLIP's image processor, SigLIP's ``hidden_states[-2]`` for every
patch: ``8 x 196 x 768`` per clip for siglip-base-patch16-224, stored as
``[8*196, 768]`` rows (``params.shape`` gives the per-clip shape; ``times`` is
each row's frame time). A clip with fewer than 8 decodable frames gets black
frames appended, as R1-Omni does.

``r1omni_audio``: 16 kHz mono, Whisper's feature extractor (128 mel bins,
padded or cut to 30 s), the Whisper encoder's ``last_hidden_state``
(``1500 x 1280`` for whisper-large-v3) average-pooled with kernel 3, stride 3:
``500 x 1280``. ``times`` is each pooled row's start (60 ms apart); rows past
the end of the audio describe padding, exactly what R1-Omni feeds its LLM.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clmer_features.errors import ModelNotFoundError
from clmer_features.extractors.base import (
    ClipOutput, DecodedClip, Extractor, ExtractorConfig, FrameRequest, param, register,
)
from clmer_features.models import ensure_offline, folder_state, prove_loaded, quiet_transformers, require_files, weights_digest
from clmer_features.spec import FeatureSpec

SAMPLE_RATE = 16000
MAX_SECONDS = 30.0
POOL = 3
ENCODER_HOP_SECONDS = 0.02  # one Whisper encoder frame per 20 ms


# WhisperForAudioClassification around a speech-recognition checkpoint: its head is new
# (never run here), the checkpoint's decoder has no place in it.
WHISPER_HEAD = ("projector.*", "classifier.*", "layer_weights")
WHISPER_DECODER = ("model.decoder.*", "decoder.*", "proj_out.*")


class MissingModalityError(ValueError):
    """The clip has no video (or no audio) for this tower."""


def _hf_config(model_dir: Path, feature: str, cls_name: str) -> Any:
    """The tower's transformers config (a SigLIP folder's ``vision_config``; defaults filled in).

    Reading a config loads no weights, so ``spec()`` stays cheap.
    """
    require_files(model_dir, ("config.json",), feature)
    ensure_offline()
    import transformers

    try:
        return getattr(transformers, cls_name).from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotFoundError(f"{model_dir}/config.json is not a {cls_name} ({exc})") from None


def _torch_dtype(device: str) -> Any:
    import torch

    return torch.float16 if str(device).startswith("cuda") else torch.float32


# --- pure tower functions (also used by tests' on-the-fly path) ----------------
def siglip_patch_tokens(model: Any, processor: Any, frames: np.ndarray, layer: int = -2) -> np.ndarray:
    """``frames [F, H, W, 3] uint8`` -> ``[F, N, D]`` float32 patch tokens of ``hidden_states[layer]``."""
    import torch

    pixels = processor(images=list(frames), return_tensors="pt")["pixel_values"]
    p = next(model.parameters())
    with torch.no_grad():
        out = model(pixel_values=pixels.to(device=p.device, dtype=p.dtype), output_hidden_states=True)
    return out.hidden_states[layer].float().cpu().numpy()


def whisper_pooled(encoder: Any, feature_extractor: Any, audio: list[np.ndarray]) -> np.ndarray:
    """16 kHz clips -> ``[B, 1500/3, D]`` float32: 30 s log-mels, encoder, avg-pool k=3."""
    import torch

    feats = feature_extractor(
        [np.asarray(a, dtype=np.float32) for a in audio], sampling_rate=SAMPLE_RATE,
        return_tensors="pt", padding="max_length", truncation=True,
    )["input_features"]
    p = next(encoder.parameters())
    with torch.no_grad():
        hidden = encoder(feats.to(device=p.device, dtype=p.dtype)).last_hidden_state  # [B, 1500, D]
        pooled = torch.nn.functional.avg_pool1d(hidden.transpose(1, 2), kernel_size=POOL, stride=POOL)
    return pooled.transpose(1, 2).float().cpu().numpy()


def pad_frames(frames: np.ndarray, times: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Append black frames (time of the last frame) until there are ``count``."""
    if len(frames) >= count:
        return frames[:count], times[:count]
    if len(frames) == 0:
        raise MissingModalityError("no video frames decoded")
    extra = count - len(frames)
    black = np.zeros((extra, *frames.shape[1:]), dtype=frames.dtype)
    return np.concatenate([frames, black]), np.concatenate([times, np.full(extra, times[-1], times.dtype)])


@dataclass(frozen=True)
class R1OmniVisionConfig(ExtractorConfig):
    num_frames: int = param(8, "frames: the middle frame of each of this many equal segments", minimum=1)
    layer: int = param(-2, "SigLIP hidden layer whose patch tokens are kept (-2: R1-Omni's)")


@register
class R1OmniVisionExtractor(Extractor):
    """SigLIP layer -2 patch tokens of 8 segment-middle frames (R1-Omni's video tower)."""

    name = "r1omni_vision"
    family = "r1omni"
    input = "video"
    Config = R1OmniVisionConfig
    default_model = "google/siglip-base-patch16-224"
    format_version = 1
    output = "[num_frames*patches, hidden] float16 patch tokens (params.shape: per-clip shape), frame times"

    def __init__(self, model_dir: Path | None, config: R1OmniVisionConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        self.num_frames = self.config.num_frames
        self.layer = self.config.layer
        self._model: Any = None
        self._processor: Any = None

    def frame_request(self) -> FrameRequest:
        return FrameRequest.segments(self.num_frames)

    def _shape(self) -> tuple[int, int, int]:
        vcfg = _hf_config(self.model_dir, self.name, "SiglipVisionConfig")
        side = int(vcfg.image_size) // int(vcfg.patch_size)
        return self.num_frames, side * side, int(vcfg.hidden_size)

    def spec(self) -> FeatureSpec:
        frames, tokens, dim = self._shape()
        return FeatureSpec.create(
            self.name,
            model_id=self.default_model,
            weights_digest=weights_digest(self.model_dir),
            format_version=self.format_version,
            params={
                **self.config.spec_params(), "frames": "segments", "resize": "squash",
                "shape": [frames, tokens, dim], "dtype": "float16",
            },
        )

    def load(self) -> None:
        if self._model is not None:
            return
        ensure_offline()
        require_files(self.model_dir, ("config.json", "preprocessor_config.json"), self.name)
        quiet_transformers()
        from transformers import SiglipImageProcessor, SiglipVisionModel

        from clmer_features.extractors.siglip import SIGLIP_NOT_VISION

        state = folder_state(self.model_dir)  # read safely first: a bad file is refused in one line
        self._processor = SiglipImageProcessor.from_pretrained(str(self.model_dir))
        model = SiglipVisionModel.from_pretrained(str(self.model_dir), dtype=_torch_dtype(self.device))
        self._model = model.to(self.device).eval()
        prove_loaded(self._model, state, self.name, self.model_dir, unused=SIGLIP_NOT_VISION)

    def unload(self) -> None:
        self._model = self._processor = None

    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        self.load()
        req = self.frame_request()
        out: list[ClipOutput | Exception] = []
        for clip in clips:
            try:
                if req not in clip.frames:
                    kind, why = clip.problems.get("video", ("absent", "clip has no video"))
                    raise MissingModalityError(f"{clip.clip_id}: no video ({kind}: {why})")
                frames, times = pad_frames(*clip.frames[req], self.num_frames)
                tokens = siglip_patch_tokens(self._model, self._processor, frames, self.layer)
                f, n, d = tokens.shape
                out.append(ClipOutput(values=tokens.reshape(f * n, d), times=np.repeat(times.astype(np.float32), n)))
            except Exception as exc:  # noqa: BLE001 - one clip's failure goes to the ledger
                out.append(exc)
        return out


@register
class R1OmniAudioExtractor(Extractor):
    """Whisper encoder output pooled by 3 over 30 s of audio (R1-Omni's audio tower)."""

    name = "r1omni_audio"
    family = "r1omni"
    input = "audio"
    default_model = "openai/whisper-large-v3"
    format_version = 1
    output = "[500, d_model] float16 Whisper encoder rows pooled by 3 (30 s, padded), row start times"

    def __init__(self, model_dir: Path | None, config: ExtractorConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        self._encoder: Any = None
        self._fe: Any = None

    def spec(self) -> FeatureSpec:
        cfg = _hf_config(self.model_dir, self.name, "WhisperConfig")
        rows, dim, mels = int(cfg.max_source_positions) // POOL, int(cfg.d_model), int(cfg.num_mel_bins)
        return FeatureSpec.create(
            self.name,
            model_id=self.default_model,
            weights_digest=weights_digest(self.model_dir),
            format_version=self.format_version,
            params={
                "sample_rate": SAMPLE_RATE, "n_mels": mels, "max_seconds": MAX_SECONDS,
                "pool": "avg", "pool_kernel": POOL, "pool_stride": POOL,
                "shape": [rows, dim], "dtype": "float16",
            },
        )

    def load(self) -> None:
        if self._encoder is not None:
            return
        ensure_offline()
        require_files(self.model_dir, ("config.json", "preprocessor_config.json"), self.name)
        quiet_transformers()  # the decoder's keys are unused on purpose: no report table, no bars
        from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

        state = folder_state(self.model_dir)  # read safely first: a bad file is refused in one line
        self._fe = WhisperFeatureExtractor.from_pretrained(str(self.model_dir))
        model = WhisperForAudioClassification.from_pretrained(str(self.model_dir), dtype=_torch_dtype(self.device))
        model = model.to(self.device).eval()
        # only the encoder runs: the classification head is never used, the decoder never built
        prove_loaded(model, state, self.name, self.model_dir, allowed_missing=WHISPER_HEAD, unused=WHISPER_DECODER)
        self._encoder = model.encoder

    def unload(self) -> None:
        self._encoder = self._fe = None

    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        self.load()
        out: list[ClipOutput | Exception] = [MissingModalityError("not run")] * len(clips)
        ok: list[int] = []
        audio: list[np.ndarray] = []
        for i, clip in enumerate(clips):
            if clip.audio is None:
                kind, why = clip.problems.get("audio", ("absent", "clip has no audio"))
                out[i] = MissingModalityError(f"{clip.clip_id}: no audio ({kind}: {why})")
                continue
            ok.append(i)
            audio.append(np.asarray(clip.audio, dtype=np.float32)[: int(MAX_SECONDS * SAMPLE_RATE)])
        if not ok:
            return out
        try:
            pooled = whisper_pooled(self._encoder, self._fe, audio)
        except Exception as exc:  # noqa: BLE001
            for i in ok:
                out[i] = exc
            return out
        step = ENCODER_HOP_SECONDS * POOL
        for j, i in enumerate(ok):
            rows = pooled[j]
            out[i] = ClipOutput(values=rows, times=(np.arange(len(rows), dtype=np.float32) * step))
        return out
