"""Vision frames family: any transformers image encoder, one row per sampled frame.

Loads the folder with ``AutoModel`` and ``AutoImageProcessor`` (PIL flavour:
no torchvision, so every machine computes the same pixels), so one module
serves CLIP, SigLIP, DINOv2, ViT, data2vec-vision ... Per frame it keeps one
vector, chosen by ``output``:

- ``image_features``: the projected image embedding (``get_image_features``:
  CLIP, SigLIP), not L2-normalised - MERTools' CLIP feature;
- ``pooler``: the vision tower's own pooled output;
- ``cls`` / ``mean`` / ``sum``: the CLS row, the mean or the sum of all token
  rows of ``layer`` (MERTools' DINOv2 feature is ``sum`` of layer ``-1``,
  which in HF DINOv2 is taken before the final layer norm).

Frames: one every ``frame_interval`` seconds (default 2 s, the same frames
siglip uses, so a run decodes them once for both), or, when ``frame_count`` is
set, the middle frames of that many equal segments of the clip (MERTools'
DINOv2 takes 64 evenly spread frames). MERTools feeds OpenFace-aligned face
crops: ``input=faces`` reads the aligned crops the ``faces`` feature cached
instead (all of them, or ``frame_count`` evenly spread; see ``face_input.py``).
Rows carry their timestamps; the pooled vector is the mean over frames
(MERTools' ``-UTT``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clmer_features.errors import ClmerError
from clmer_features.extractors import hf_common as H
from clmer_features.extractors.base import (
    ClipOutput, DecodedClip, Extractor, ExtractorConfig, FrameRequest, param,
)
from clmer_features.extractors.face_input import INPUT_HELP, INPUTS, FaceInput
from clmer_features.spec import FeatureSpec

OUTPUTS = ("image_features", "pooler", "cls", "mean", "sum")


@dataclass(frozen=True)
class VisionFramesConfig(ExtractorConfig):
    frame_interval: float = param(2.0, "seconds between sampled frames (used when frame_count is 0)", minimum=0.01)
    frame_count: int = param(0, "if > 0: the middle frames of this many equal segments of the clip instead",
                             minimum=0)
    output: str = param("pooler", "the vector kept per frame: projected image embedding, the tower's pooler, "
                        "or the CLS row / mean / sum of the layer's tokens", choices=OUTPUTS)
    layer: str = param("last", H.LAYER_HELP)
    input: str = param("frames", INPUT_HELP, choices=INPUTS)
    frame_batch: int = param(32, "frames per forward pass", spec=False, minimum=1)


class VisionFramesExtractor(FaceInput, Extractor):
    """Any transformers image encoder; a feature is a preset of it (``presets.py``)."""

    name = "hf_vision"
    family = "vision-frames"
    input = "video"
    Config = VisionFramesConfig
    format_version = 1
    output = "[frames, D] one vector per sampled frame, with times + pooled [D] (mean over frames)"

    def __init__(self, model_dir: Path | None, config: VisionFramesConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        self.layer = H.check_layer(self.name, self.config.layer)
        if self.config.output in ("image_features", "pooler") and self.layer != "last":
            raise ClmerError(f"{self.name}.layer: output={self.config.output} is the model's own last layer; "
                             f"use output=cls, mean or sum with layer={self.layer}")
        self.model: Any = None
        self.processor: Any = None
        self.setup_faces(self.config.input)

    def frame_request(self) -> FrameRequest | None:
        c = self.config
        if self.uses_faces:
            return None
        return FrameRequest.segments(c.frame_count) if c.frame_count > 0 else FrameRequest.interval(c.frame_interval)

    def spec(self) -> FeatureSpec:
        params = self.config.spec_params()
        params.pop("frame_interval" if self.config.frame_count > 0 else "frame_count")
        params = self.faces_spec_params(params, ("frame_interval",))
        return H.family_spec(self, {**params, "layer": self.layer})

    def frames_of(self, clip: DecodedClip) -> tuple[np.ndarray, np.ndarray]:
        """The images this feature encodes for ``clip`` and their times."""
        if self.uses_faces:
            return self.face_frames(clip, self.config.frame_count)
        return clip.frames[self.frame_request()]

    def load(self) -> None:
        if self.model is not None:
            return
        folder = H.model_folder(self)
        model = H.load_model(folder, self.name, device=self.device)
        if self.config.output == "image_features" and not hasattr(model, "get_image_features"):
            raise ClmerError(f"{self.name}: output=image_features needs a model with an image projection "
                             f"(CLIP, SigLIP); {folder} holds {type(model).__name__}")
        self.processor = H.load_processor(folder, self.name, "AutoImageProcessor")
        self.model = model

    def unload(self) -> None:
        self.model = None
        self.processor = None

    def _forward(self, pix: Any) -> Any:
        out_kind, m = self.config.output, self.model
        if out_kind == "image_features":
            got = m.get_image_features(pixel_values=pix)
            return got if hasattr(got, "shape") else got.pooler_output
        tower = getattr(m, "vision_model", m)
        out = tower(pixel_values=pix, output_hidden_states=H.needs_hidden_states(self.layer), return_dict=True)
        if out_kind == "pooler":
            if getattr(out, "pooler_output", None) is None:
                raise ClmerError(f"{self.name}: {type(m).__name__} has no pooler output; use output=cls or mean")
            return out.pooler_output
        h = H.pick_layer(out, self.layer).float()
        return h[:, 0] if out_kind == "cls" else (h.mean(dim=1) if out_kind == "mean" else h.sum(dim=1))

    def embed_frames(self, frames: list[np.ndarray]) -> np.ndarray:
        """F frames [H, W, 3] uint8 RGB -> [F, D] float32."""
        import torch

        self.load()
        out = []
        for i in range(0, len(frames), self.config.frame_batch):
            pix = self.processor(images=list(frames[i:i + self.config.frame_batch]), return_tensors="pt")
            pix = pix["pixel_values"].to(self.model.device, dtype=self.model.dtype)
            with torch.inference_mode():
                out.append(H.to_numpy(self._forward(pix)))
        return np.concatenate(out, axis=0)

    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        results: list[ClipOutput | Exception] = []
        ok: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for i, c in enumerate(clips):
            missing = self.missing_input(c)
            results.append(ValueError(f"{c.clip_id}: no frames ({missing[0]}: {missing[1]})") if missing
                           else ClipOutput())
            if not missing:
                ok[i] = self.frames_of(c)
        if not ok:
            return results
        emb = self.embed_frames([f for frames, _ in ok.values() for f in frames])
        pos = 0
        for i, (frames, times) in ok.items():
            rows = emb[pos:pos + len(frames)]
            pos += len(frames)
            results[i] = ClipOutput(values=rows, times=None if times is None else np.asarray(times, np.float32),
                                    pooled=H.mean_rows(rows))
        return results
