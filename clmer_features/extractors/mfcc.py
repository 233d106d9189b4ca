"""MFCCs through librosa: no model folder, the classic spectral-envelope feature.

librosa is the reference Python audio-analysis library (actively released,
numpy/scipy only, no torch), whose ``librosa.feature.mfcc`` is what emotion
recognition code, the Cross-Modal ER seed's kind included, calls for MFCCs; it
is already installed with funasr. (python_speech_features has had no release
since 2017; torchaudio would pull its own torch.)

Per clip: one row of ``n_mfcc`` coefficients per ``hop_ms`` (frames centred on
their times, a ``win_ms`` Hann window, ``n_mels`` mel bands), optionally with
deltas and delta-deltas appended; the pooled vector is the mean over frames.
Defaults are the speech-standard 25 ms windows every 10 ms with 40 coefficients
of 40 mel bands. The librosa version goes into the spec.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clmer_features.extractors.base import ClipOutput, DecodedClip, Extractor, ExtractorConfig, param, register
from clmer_features.spec import FeatureSpec

RATE = 16000


@dataclass(frozen=True)
class MfccConfig(ExtractorConfig):
    n_mfcc: int = param(40, "coefficients per frame", minimum=1)
    n_mels: int = param(40, "mel bands", minimum=1)
    win_ms: float = param(25.0, "analysis window (ms)", minimum=1.0)
    hop_ms: float = param(10.0, "time between frames (ms)", minimum=1.0)
    deltas: bool = param(False, "append deltas and delta-deltas (3 x n_mfcc columns)")


@register
class MfccExtractor(Extractor):
    """MFCCs (librosa): one row per 10 ms, mean as pooled."""

    name = "mfcc"
    family = "acoustic"
    input = "audio"
    Config = MfccConfig
    format_version = 1
    output = "[frames, 40] every 10 ms with times + pooled [40] (mean)"

    def spec(self) -> FeatureSpec:
        import librosa

        return FeatureSpec.create(self.name, format_version=self.format_version,
                                  params={**self.config.spec_params(), "librosa": librosa.__version__})

    def provenance(self) -> dict[str, Any]:
        import librosa

        return {"library": f"librosa {librosa.__version__}"}

    def load(self) -> None:
        import librosa  # noqa: F401  (import cost once, before the first clip)

    def features(self, audio: np.ndarray) -> ClipOutput:
        import librosa

        c = self.config
        hop = int(round(c.hop_ms * RATE / 1000))
        win = int(round(c.win_ms * RATE / 1000))
        m = librosa.feature.mfcc(y=np.asarray(audio, np.float32), sr=RATE, n_mfcc=c.n_mfcc, n_fft=win,
                                 hop_length=hop, win_length=win, n_mels=c.n_mels)
        if c.deltas:
            n = m.shape[1]
            width = min(9, n if n % 2 else n - 1)  # librosa's default 9, odd and within the clip
            d1 = librosa.feature.delta(m, width=width) if width >= 3 else np.zeros_like(m)
            d2 = librosa.feature.delta(m, order=2, width=width) if width >= 3 else np.zeros_like(m)
            m = np.concatenate([m, d1, d2], axis=0)
        rows = np.ascontiguousarray(m.T, dtype=np.float32)
        times = (np.arange(len(rows)) * hop / RATE).astype(np.float32)
        return ClipOutput(values=rows, times=times, pooled=rows.mean(axis=0))

    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        out: list[ClipOutput | Exception] = []
        for c in clips:
            missing = self.missing_input(c)
            out.append(ValueError(f"{c.clip_id}: no audio ({missing[0]}: {missing[1]})") if missing
                       else self.features(c.audio))
        return out
