"""Video clips family: a VideoMAE-style encoder sees a clip of frames at once.

``AutoModel`` + ``AutoImageProcessor`` (PIL flavour) from the folder. The
clip's ``frame_count`` x ``clip_count`` frames are the middle frames of that
many equal segments of the clip (MERTools samples 16 frames uniformly and
feeds them as one clip); consecutive groups of ``frame_count`` frames make
``clip_count`` model inputs (MERTools' "sunlicai" option is 2 clips of 16).
``frame_count`` must equal the checkpoint's ``num_frames`` (its position
embeddings are fixed). ``input=faces`` takes those frames evenly spread over
the aligned face crops the ``faces`` feature cached (see ``face_input.py``).

Rows (``rows``): ``tubelets`` averages the patch tokens of each temporal
position (``num_frames / tubelet_size`` rows per clip, 8 for VideoMAE - MERTools'
``-FRA``), each at the mean time of its frames; ``clip`` keeps one row per
model input (mean of all its tokens). The pooled vector is the mean of the
rows (MERTools' ``-UTT``). A pretraining checkpoint (MCG-NJU/videomae-*)
loads its encoder; the decoder's tensors are left unused, as ``AutoModel``
does.
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


@dataclass(frozen=True)
class VideoClipsConfig(ExtractorConfig):
    frame_count: int = param(16, "frames per model input (the checkpoint's num_frames)", minimum=1)
    clip_count: int = param(1, "model inputs per clip (frames spread over the whole clip)", minimum=1)
    rows: str = param("tubelets", "rows kept: the mean patch token per tubelet step, or one row per input",
                      choices=("tubelets", "clip"))
    layer: str = param("last", H.LAYER_HELP)
    input: str = param("frames", INPUT_HELP, choices=INPUTS)
    clip_batch: int = param(4, "model inputs per forward pass", spec=False, minimum=1)


class VideoClipsExtractor(FaceInput, Extractor):
    """Any VideoMAE-style video encoder; a feature is a preset of it (``presets.py``)."""

    name = "hf_video"
    family = "video-clips"
    input = "video"
    Config = VideoClipsConfig
    format_version = 1
    output = "[tubelets, D] (8 per 16-frame input for VideoMAE), with times + pooled [D]"

    def __init__(self, model_dir: Path | None, config: VideoClipsConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        self.layer = H.check_layer(self.name, self.config.layer)
        self.model: Any = None
        self.processor: Any = None
        self.setup_faces(self.config.input)

    def frame_request(self) -> FrameRequest | None:
        return None if self.uses_faces else FrameRequest.segments(self.config.frame_count * self.config.clip_count)

    def spec(self) -> FeatureSpec:
        params = self.faces_spec_params(self.config.spec_params(), ())
        return H.family_spec(self, {**params, "layer": self.layer})

    def frames_of(self, clip: DecodedClip) -> tuple[np.ndarray, np.ndarray]:
        """The clip's frame_count x clip_count images and their times."""
        if self.uses_faces:
            return self.face_frames(clip, self.config.frame_count * self.config.clip_count)
        return clip.frames[self.frame_request()]

    def load(self) -> None:
        if self.model is not None:
            return
        folder = H.model_folder(self)
        model = H.load_model(folder, self.name, device=self.device)
        want = getattr(model.config, "num_frames", self.config.frame_count)
        if want != self.config.frame_count:
            raise ClmerError(f"{self.name}.frame_count: {folder} takes clips of {want} frames, "
                             f"not {self.config.frame_count}")
        self.processor = H.load_processor(folder, self.name, "AutoImageProcessor")
        self.model = model

    def unload(self) -> None:
        self.model = None
        self.processor = None

    def embed_inputs(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Model inputs [frame_count, H, W, 3] uint8 -> per input, its rows [R, D] float32."""
        import torch

        self.load()
        cfg = self.model.config
        steps = self.config.frame_count // getattr(cfg, "tubelet_size", 1)
        out: list[np.ndarray] = []
        for i in range(0, len(inputs), self.config.clip_batch):
            videos = [list(v) for v in inputs[i:i + self.config.clip_batch]]
            pix = self.processor(videos, return_tensors="pt")["pixel_values"]
            pix = pix.to(self.model.device, dtype=self.model.dtype)
            with torch.inference_mode():
                res = self.model(pixel_values=pix, output_hidden_states=H.needs_hidden_states(self.layer))
            h = H.pick_layer(res, self.layer).float()  # [B, steps * patches, D]
            h = h.reshape(h.shape[0], steps, -1, h.shape[-1]).mean(dim=2)  # [B, steps, D]
            if self.config.rows == "clip":
                h = h.mean(dim=1, keepdim=True)
            out.extend(H.to_numpy(h))
        return out

    def _times(self, times: np.ndarray) -> np.ndarray:
        """Per input and row, the mean time of the frames that make the row."""
        per = self.config.frame_count if self.config.rows == "clip" else getattr(self.model.config, "tubelet_size", 1)
        return np.asarray(times, np.float64).reshape(-1, per).mean(axis=1).astype(np.float32)

    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        n, need = self.config.frame_count, self.config.frame_count * self.config.clip_count
        results: list[ClipOutput | Exception] = []
        inputs: list[np.ndarray] = []
        owners: list[int] = []
        times_of: dict[int, np.ndarray] = {}
        for i, c in enumerate(clips):
            missing = self.missing_input(c)
            if missing:
                results.append(ValueError(f"{c.clip_id}: no frames ({missing[0]}: {missing[1]})"))
                continue
            frames, times_of[i] = self.frames_of(c)
            if len(frames) != need:
                results.append(ValueError(f"{c.clip_id}: {len(frames)} frames decoded, {need} needed"))
                continue
            results.append(ClipOutput())
            for k in range(self.config.clip_count):
                inputs.append(frames[k * n:(k + 1) * n])
                owners.append(i)
        if not inputs:
            return results
        rows = self.embed_inputs(inputs)
        for i in dict.fromkeys(owners):
            values = np.concatenate([r for r, o in zip(rows, owners) if o == i], axis=0)
            results[i] = ClipOutput(values=values, times=None if times_of[i] is None else self._times(times_of[i]),
                                    pooled=H.mean_rows(values))
        return results
