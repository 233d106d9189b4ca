"""eGeMAPS acoustic features through openSMILE: no model folder, real numbers on real audio.

The ``opensmile`` package (audEERING's Python wrapper around the openSMILE
library it ships) computes the Geneva Minimalistic Acoustic Parameter Set
(eGeMAPSv02 by default), the standard hand-made paralinguistic set; MERTools
lists it among its audio baselines. Per clip:

- rows: the 25 low-level descriptors (pitch, loudness, jitter, shimmer, formants,
  spectral slopes ...) every 10 ms, each with its start time;
- pooled: the set's 88 functionals over the clip (means, percentiles, rates ...),
  which is what "eGeMAPS features" usually means for an utterance.

The opensmile version goes into the spec: another openSMILE build may compute
other numbers, so it is another cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clmer_features.extractors.base import ClipOutput, DecodedClip, Extractor, ExtractorConfig, param, register
from clmer_features.spec import FeatureSpec

RATE = 16000
SETS = ("eGeMAPSv02", "eGeMAPSv01b", "GeMAPSv01b")


@dataclass(frozen=True)
class EgemapsConfig(ExtractorConfig):
    feature_set: str = param("eGeMAPSv02", "openSMILE feature set", choices=SETS)


@register
class EgemapsExtractor(Extractor):
    """openSMILE eGeMAPS: low-level descriptors every 10 ms and the 88 functionals per clip."""

    name = "egemaps"
    family = "acoustic"
    input = "audio"
    Config = EgemapsConfig
    format_version = 1
    output = "[frames, 25] LLDs every 10 ms with times + pooled [88] functionals"

    def __init__(self, model_dir: Path | None, config: EgemapsConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        self.lld: Any = None
        self.func: Any = None

    def spec(self) -> FeatureSpec:
        import opensmile

        return FeatureSpec.create(self.name, format_version=self.format_version,
                                  params={**self.config.spec_params(), "opensmile": opensmile.__version__})

    def provenance(self) -> dict[str, Any]:
        import opensmile

        return {"library": f"opensmile {opensmile.__version__}"}

    def load(self) -> None:
        if self.lld is not None:
            return
        import opensmile

        fs = getattr(opensmile.FeatureSet, self.config.feature_set)
        self.lld = opensmile.Smile(feature_set=fs, feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
        self.func = opensmile.Smile(feature_set=fs, feature_level=opensmile.FeatureLevel.Functionals)

    def unload(self) -> None:
        self.lld = self.func = None

    def features(self, audio: np.ndarray) -> ClipOutput:
        """One clip's 16 kHz mono samples -> LLD rows with times, functionals as pooled."""
        self.load()
        x = np.asarray(audio, np.float32)
        lld = self.lld.process_signal(x, RATE)
        times = lld.index.get_level_values("start").total_seconds().to_numpy(np.float32)
        func = self.func.process_signal(x, RATE).to_numpy(np.float32)[0]
        return ClipOutput(values=lld.to_numpy(np.float32), times=times, pooled=func)

    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        out: list[ClipOutput | Exception] = []
        for c in clips:
            missing = self.missing_input(c)
            if missing:
                out.append(ValueError(f"{c.clip_id}: no audio ({missing[0]}: {missing[1]})"))
                continue
            try:
                out.append(self.features(c.audio))
            except Exception as exc:  # noqa: BLE001 - one clip's failure is that clip's
                out.append(exc)
        return out
