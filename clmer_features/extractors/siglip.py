"""SigLIP vision tower, pooled: one row per sampled frame (every 2 s by default).

Preprocessing is transformers' own SiglipImageProcessor in its PIL flavour
(``SiglipImageProcessorPil``) loaded from the model folder, so the numbers
equal a direct ``processor(images) -> SiglipVisionModel`` forward (a test
proves it). The PIL flavour is used always, never the torchvision one, so
a machine with torchvision gives the same numbers as one without.
Frames of all clips in a batch go through the model together (fp16 on GPU).
``input=faces`` encodes the aligned crops the ``faces`` feature cached instead
of frames (see ``face_input.py``); the default spec is unchanged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clmer_features.extractors.base import (
    ClipOutput, DecodedClip, Extractor, ExtractorConfig, FrameRequest, param, register,
)
from clmer_features.extractors.face_input import INPUT_HELP, INPUTS, FaceInput
from clmer_features.models import ensure_offline, folder_state, prove_loaded, quiet_transformers, require_files, weights_digest
from clmer_features.spec import FeatureSpec


# A SigLIP checkpoint holds both towers; the vision model uses the vision tower only.
SIGLIP_NOT_VISION = ("text_model.*", "logit_scale", "logit_bias")


def load_image_processor(model_dir: Path) -> Any:
    """The folder's SigLIP image processor, PIL backend (no torchvision)."""
    ensure_offline()
    import transformers

    cls = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    return cls.from_pretrained(str(model_dir), local_files_only=True)


@dataclass(frozen=True)
class SiglipConfig(ExtractorConfig):
    frame_interval: float = param(2.0, "seconds between sampled frames (t = 0, interval, 2*interval ...)",
                                  minimum=0.01)
    input: str = param("frames", INPUT_HELP, choices=INPUTS)
    frame_batch: int = param(64, "frames per forward pass", spec=False, minimum=1)


@register
class SiglipExtractor(FaceInput, Extractor):
    name = "siglip"
    family = "vision-frames"
    input = "video"
    Config = SiglipConfig
    default_model = "google/siglip-base-patch16-224"
    format_version = 1
    output = "[frames, hidden] pooled vision embeddings, one row per sampled frame, with times"

    def __init__(self, model_dir: Path | None, config: SiglipConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        self.frame_interval = self.config.frame_interval
        self.frame_batch = self.config.frame_batch
        self.model: Any = None
        self.processor: Any = None
        self.setup_faces(self.config.input)

    def frame_request(self) -> FrameRequest | None:
        return None if self.uses_faces else FrameRequest.interval(self.frame_interval)

    def _preprocess_config(self) -> dict[str, Any]:
        require_files(self.model_dir, ("config.json", "preprocessor_config.json"), self.name)
        cfg = json.loads((self.model_dir / "preprocessor_config.json").read_text(encoding="utf-8"))
        keys = ("size", "resample", "rescale_factor", "image_mean", "image_std", "do_resize",
                "do_rescale", "do_normalize")
        return {k: cfg[k] for k in keys if k in cfg}

    def spec(self) -> FeatureSpec:
        return FeatureSpec.create(
            self.name,
            extractor=self.name,
            model_id=self.default_model,  # the folder is identified by its weights digest, never its path
            weights_digest=weights_digest(self.model_dir),
            format_version=self.format_version,
            params={
                **self.faces_spec_params(self.config.spec_params(), ("frame_interval",)),
                "output": "pooler_output",
                "preprocess": {"processor": "SiglipImageProcessorPil", **self._preprocess_config()},
            },
        )

    def load(self) -> None:
        if self.model is not None:
            return
        require_files(self.model_dir, ("config.json", "preprocessor_config.json"), self.name)
        ensure_offline()
        quiet_transformers()
        import torch
        from transformers import SiglipVisionModel

        state = folder_state(self.model_dir)  # read safely first: a bad file is refused in one line
        model = SiglipVisionModel.from_pretrained(str(self.model_dir), local_files_only=True)
        model.eval()
        if self.device.startswith("cuda"):
            model = model.to(self.device, dtype=torch.float16)
        prove_loaded(model, state, self.name, self.model_dir, unused=SIGLIP_NOT_VISION)
        self.model = model
        self.processor = load_image_processor(self.model_dir)

    def unload(self) -> None:
        self.model = None
        self.processor = None

    def embed_frames(self, frames: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """F frames [H, W, 3] uint8 RGB (sizes may differ) -> [F, D] float32 pooled embeddings."""
        import torch

        self.load()
        out = []
        for i in range(0, len(frames), self.frame_batch):
            chunk = list(frames[i:i + self.frame_batch])
            pix = self.processor(images=chunk, return_tensors="pt")["pixel_values"]
            pix = pix.to(self.model.device, dtype=self.model.dtype)
            with torch.inference_mode():
                pooled = self.model(pixel_values=pix).pooler_output
            out.append(pooled.float().cpu().numpy())
        dim = self.model.config.hidden_size
        return np.concatenate(out, axis=0) if out else np.zeros((0, dim), np.float32)

    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        req = self.frame_request()
        results: list[ClipOutput | Exception] = []
        ok: list[tuple[int, np.ndarray, np.ndarray]] = []
        for i, c in enumerate(clips):
            missing = self.missing_faces(c) if self.uses_faces else (
                None if req in c.frames and len(c.frames[req][0]) else
                c.problems.get("video", ("absent", "no frames decoded")))
            if missing:
                results.append(ValueError(f"{c.clip_id}: no frames ({missing[0]}: {missing[1]})"))
            else:
                results.append(ClipOutput())
                ok.append((i, *(self.face_frames(c) if self.uses_faces else c.frames[req])))
        if not ok:
            return results
        emb = self.embed_frames([frame for _, f, _ in ok for frame in f])
        pos = 0
        for i, f, t in ok:
            n = len(f)
            results[i] = ClipOutput(values=emb[pos:pos + n], times=t)
            pos += n
        return results
