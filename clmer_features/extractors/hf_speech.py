"""Speech family: HuBERT, wav2vec2, WavLM, data2vec-audio or Whisper's encoder, in windows.

``AutoModel`` + ``AutoFeatureExtractor`` from the folder (a HuBERT folder has
no tokenizer, so never ``AutoProcessor``); for Whisper checkpoints only the
encoder is kept. Audio is 16 kHz mono, as MERTools extracts it.

Windows, as MERTools' audio script does: the waveform is normalised once as a
whole (when the feature extractor normalises), then a clip longer than
``window_seconds`` (default 10 s) is zero-padded to a whole number of windows
and each window goes through the model on its own; a clip within one window
runs at its own length. Rows of the windows are stitched in time (about 50 per
second, each with its start time), so memory is bounded by ``window_batch``
windows, whatever the clip's length. ``tail=keep`` also keeps the rows of the
zero padding after the audio's end, as MERTools does; the default ``drop``
keeps only rows that start inside the audio. Windows of equal length are
batched without padding or masks, so a clip's numbers do not depend on its
batch (group-norm encoders such as wav2vec2-base change with padding).

Whisper's encoder takes 30 s of log-mel at a time: each window is padded to
30 s by its feature extractor and rows past the window's audio are dropped.
MERTools' Whisper feature is the *decoder* state of two start tokens, which
this family does not make.

``layer``: MERTools sums the last 4 hidden states (``sum_last4``); the
presets do so too. The pooled vector is the mean of the rows (MERTools'
``-UTT``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clmer_features.errors import ClmerError
from clmer_features.extractors import hf_common as H
from clmer_features.extractors.base import ClipOutput, DecodedClip, Extractor, ExtractorConfig, param
from clmer_features.spec import FeatureSpec

RATE = 16000
WHISPER_SECONDS = 30.0


@dataclass(frozen=True)
class SpeechConfig(ExtractorConfig):
    window_seconds: float = param(10.0, "longest audio per forward pass; longer clips are cut into windows "
                                  "of this length (the last one zero-padded)", minimum=0.5)
    tail: str = param("drop", "rows of the last window's zero padding: drop them, or keep them (MERTools)",
                      choices=("drop", "keep"))
    layer: str = param("last", H.LAYER_HELP)
    window_batch: int = param(8, "windows per forward pass (bounds memory)", spec=False, minimum=1)


class SpeechExtractor(Extractor):
    """Any transformers speech encoder; a feature is a preset of it (``presets.py``)."""

    name = "hf_speech"
    family = "speech"
    input = "audio"
    Config = SpeechConfig
    format_version = 1
    output = "[frames, D] at about 50 rows/s with times + pooled [D] (mean over rows)"

    def __init__(self, model_dir: Path | None, config: SpeechConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        self.layer = H.check_layer(self.name, self.config.layer)
        self.model: Any = None
        self.fe: Any = None
        self.whisper = False
        self.hop = 0.02  # seconds between rows, from the model's config at load

    def spec(self) -> FeatureSpec:
        return H.family_spec(self, {**self.config.spec_params(), "layer": self.layer})

    def load(self) -> None:
        if self.model is not None:
            return
        folder = H.model_folder(self)
        model = H.load_model(folder, self.name, device=self.device)
        self.whisper = getattr(model.config, "model_type", "") == "whisper"
        if self.whisper:
            if self.config.window_seconds > WHISPER_SECONDS:
                raise ClmerError(f"{self.name}.window_seconds: Whisper's encoder sees at most "
                                 f"{WHISPER_SECONDS:g} s, got {self.config.window_seconds:g}")
            self.hop = WHISPER_SECONDS / model.config.max_source_positions
            model = model.get_encoder()  # the decoder is never used: let it go
        else:
            self.hop = float(np.prod(getattr(model.config, "conv_stride", (320,)))) / RATE
        self.fe = H.load_processor(folder, self.name, "AutoFeatureExtractor")
        self.model = model

    def unload(self) -> None:
        self.model = None
        self.fe = None

    def frames(self, samples: int) -> int:
        """Rows the encoder makes from ``samples`` (its convolutions' kernels and strides)."""
        if self.whisper:
            return int(np.ceil(samples / (self.hop * RATE)))
        n = samples
        cfg = self.model.config
        for k, st in zip(getattr(cfg, "conv_kernel", ()), getattr(cfg, "conv_stride", ())):
            n = (n - k) // st + 1 if n >= k else 0
        return n

    # --- windows ----------------------------------------------------------------
    def _normalized(self, audio: np.ndarray) -> np.ndarray:
        """The whole clip normalised once, as the feature extractor would (Whisper: unchanged)."""
        x = np.asarray(audio, np.float32)
        if self.whisper or not getattr(self.fe, "do_normalize", False):
            return x
        return ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)

    def windows(self, audio: np.ndarray) -> list[np.ndarray]:
        """The clip's windows: itself when it fits in one, else equal windows, the last zero-padded."""
        x = self._normalized(audio)
        w = int(round(self.config.window_seconds * RATE))
        if len(x) <= w:
            return [x]
        n = -(-len(x) // w)
        x = np.concatenate([x, np.zeros(n * w - len(x), np.float32)])
        return [x[k * w:(k + 1) * w] for k in range(n)]

    def _forward(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        """Equal-length windows -> rows [T, D] each."""
        import torch

        dev, dt = self.model.device, self.model.dtype
        hidden = H.needs_hidden_states(self.layer)
        if self.whisper:
            feats = self.fe(batch, sampling_rate=RATE, return_tensors="pt")["input_features"]
            with torch.inference_mode():
                res = self.model(feats.to(dev, dtype=dt), output_hidden_states=hidden)
            h = H.to_numpy(H.pick_layer(res, self.layer))
            keep = min(h.shape[1], int(np.ceil(len(batch[0]) / (self.hop * RATE) - 1e-9)))
            return list(h[:, :keep])  # rows of the window's own audio, not of the 30 s padding
        x = torch.from_numpy(np.stack(batch)).to(dev, dtype=dt)
        with torch.inference_mode():
            res = self.model(input_values=x, output_hidden_states=hidden)
        return list(H.to_numpy(H.pick_layer(res, self.layer)))

    def embed(self, audios: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per clip (rows [T, D], times [T]): the windows of all clips, grouped by length, go through
        the model ``window_batch`` at a time; each clip's rows are stitched back in time."""
        self.load()
        wins = [self.windows(a) for a in audios]
        by_len: dict[int, list[tuple[int, int]]] = {}
        for i, ws in enumerate(wins):
            for k, w in enumerate(ws):
                by_len.setdefault(len(w), []).append((i, k))
        got: dict[tuple[int, int], np.ndarray] = {}
        for group in by_len.values():
            for s in range(0, len(group), self.config.window_batch):
                part = group[s:s + self.config.window_batch]
                got.update(zip(part, self._forward([wins[i][k] for i, k in part])))
        out = []
        for i, a in enumerate(audios):
            rows = [got[(i, k)] for k in range(len(wins[i]))]
            times = [k * self.config.window_seconds + np.arange(len(r)) * self.hop for k, r in enumerate(rows)]
            values, t = np.concatenate(rows, axis=0), np.concatenate(times).astype(np.float32)
            if self.config.tail == "drop":
                keep = max(1, int(np.searchsorted(t, len(a) / RATE - 1e-9, side="left")))
                values, t = values[:keep], t[:keep]
            out.append((values, t))
        return out

    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        results: list[ClipOutput | Exception] = []
        ok: list[int] = []
        self.load()
        for i, c in enumerate(clips):
            missing = self.missing_input(c)
            if missing:
                results.append(ValueError(f"{c.clip_id}: no audio ({missing[0]}: {missing[1]})"))
            elif self.frames(len(c.audio)) < 1:
                results.append(ValueError(f"{c.clip_id}: {len(c.audio) / RATE:.3f} s of audio is too short for "
                                          f"{self.name} (not one frame)"))
            else:
                results.append(ClipOutput())
                ok.append(i)
        for i, (rows, times) in zip(ok, self.embed([clips[i].audio for i in ok])):
            results[i] = ClipOutput(values=rows, times=times, pooled=H.mean_rows(rows))
        return results
