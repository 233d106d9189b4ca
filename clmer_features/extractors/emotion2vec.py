"""emotion2vec through funasr: 50 Hz frame rows and the utterance vector.

One forward pass per window gives both: the frame rows (``values`` [T, D],
``times`` = start of each 20 ms frame, seconds from the clip start) and the
utterance vector (``pooled``, the mean of the frame rows, which is what
funasr's ``granularity="utterance"`` returns for audio that fits one window).

The model's memory grows with the square of the audio length (attention and
its ALiBi bias are T x T), so long audio is cut into equal windows of at most
``window_seconds`` (aligned to the 320-sample frame hop) and each window runs
alone; the window length is in the spec. emotion2vec runs one clip at a time.

funasr is careful about nothing we need it careful about: a missing folder
sends it to the network, a checkpoint whose keys or shapes differ from the
model is loaded silently with random weights where they differ, and a folder
whose ``configuration.json`` lacks ``file_path_metas.init_param`` is never
loaded at all (seeded random weights). So the folder is checked before funasr
sees it, funasr only builds the model, and clmer loads ``model.pt`` itself
(``torch.load(weights_only=True)``: a pickled payload is refused, never run)
and proves every tensor of the model is the file's (``models.prove_loaded``).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from clmer_features.errors import ModelNotFoundError
from clmer_features.extractors.base import ClipOutput, DecodedClip, Extractor, ExtractorConfig, param, register
from clmer_features.models import ensure_offline, load_state_safely, prove_loaded, weights_digest
from clmer_features.spec import FeatureSpec

SAMPLE_RATE = 16000
FRAME_HOP = 320  # samples between frames of the conv front end (50 Hz)
MIN_SAMPLES = 400  # receptive field of one frame (25 ms): shorter audio gives no frame


class NoAudioError(ValueError):
    """The clip has no audio to work on."""


def clip_audio(clip: DecodedClip) -> np.ndarray:
    """The clip's 16 kHz mono samples as float32, or an error saying why there are none."""
    if clip.audio is None:
        kind, why = clip.problems.get("audio", ("absent", "clip has no audio"))
        raise NoAudioError(f"{clip.clip_id}: no audio ({kind}: {why})")
    audio = np.asarray(clip.audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"{clip.clip_id}: audio must be mono [samples], got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError(f"{clip.clip_id}: audio holds NaN or infinite samples")
    return audio


def window_bounds(n_samples: int, window_samples: int, hop: int = FRAME_HOP) -> list[tuple[int, int]]:
    """Cut ``n_samples`` into the fewest equal windows of at most ``window_samples``,
    boundaries on multiples of ``hop`` so the frame grid runs on across windows."""
    if n_samples <= window_samples:
        return [(0, n_samples)]
    count = math.ceil(n_samples / window_samples)
    cuts = [0]
    for i in range(1, count):
        cuts.append(int(round(i * n_samples / count / hop)) * hop)
    cuts.append(n_samples)
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _hub_id(model_dir: Path, fallback: str) -> str:
    """The hub id a folder says it holds (configuration.json ``model_name_in_hub``)."""
    meta = model_dir / "configuration.json"
    try:
        names = json.loads(meta.read_text(encoding="utf-8")).get("model_name_in_hub") or {}
    except (OSError, ValueError, AttributeError):
        return fallback
    return str(names.get("hf") or names.get("ms") or fallback)


# Training-only tensors a data2vec-style checkpoint may carry (the EMA teacher):
# never used by the forward pass, so not a mismatch.
TRAINING_ONLY = ("_ema", "_ema.*", "ema.*")


def _quiet_trust_remote_code(record: logging.LogRecord) -> bool:
    """funasr warns ``trust_remote_code: False`` on every model it builds; clmer always
    passes False (a config.yaml cannot turn it on), so the line says nothing."""
    return not str(record.msg).startswith("trust_remote_code:")


@contextlib.contextmanager
def contained_funasr() -> Iterator[None]:
    """Import / build funasr things inside this block: importing funasr configures
    the root logger at INFO (``funasr/bin/realtime_ws.py`` calls basicConfig),
    building an AutoModel reseeds every random generator and prints to stdout.
    The block keeps funasr's INFO lines quiet and undoes the rest on exit."""
    import random

    import torch

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    disabled = logging.root.manager.disable
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    logging.disable(max(disabled, logging.INFO))
    root.addFilter(_quiet_trust_remote_code)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(_quiet_trust_remote_code)
        logging.disable(disabled)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


@dataclass(frozen=True)
class Emotion2vecConfig(ExtractorConfig):
    window_seconds: float = param(30.0, "longest audio window per forward pass (longer audio is cut into "
                                  "equal hop-aligned windows)", minimum=1.0)


@register
class Emotion2vecExtractor(Extractor):
    """emotion2vec (base / plus) frame rows at 50 Hz and the utterance vector."""

    name = "emotion2vec"
    family = "speech"
    input = "audio"
    Config = Emotion2vecConfig
    default_model = "emotion2vec/emotion2vec_base"
    format_version = 1
    output = "[frames, hidden] at 50 Hz with times + pooled [hidden] (mean of the rows)"

    def __init__(self, model_dir: Path | None, config: Emotion2vecConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        self.window_seconds = self.config.window_seconds
        self._auto: Any = None
        self._model: Any = None
        self._normalize = True

    # --- spec -----------------------------------------------------------------
    def spec(self) -> FeatureSpec:
        self._check_folder()
        return FeatureSpec.create(
            self.name,
            model_id=_hub_id(self.model_dir, self.default_model),
            weights_digest=weights_digest(self.model_dir),
            format_version=self.format_version,
            params={
                **self.config.spec_params(),
                "window_split": "equal, hop-aligned",
                "layer": "last",
                "frame_hz": SAMPLE_RATE // FRAME_HOP,
                "times": "frame start",
                "pooled": "mean of frame rows",
                "precision": "fp32",
            },
        )

    def provenance(self) -> dict[str, Any]:
        """The folder, the hub id its configuration.json names and the model class its config.yaml builds."""
        out = super().provenance()
        name = _hub_id(self.model_dir, "")
        if name:
            out["name_or_path"] = name
        try:
            import yaml

            model = (yaml.safe_load((self.model_dir / "config.yaml").read_text(encoding="utf-8")) or {}).get("model")
        except (OSError, ValueError, AttributeError):
            model = None
        if model:
            out["architectures"] = [str(model)]
        return out

    # --- loading --------------------------------------------------------------
    def _check_folder(self) -> None:
        d = self.model_dir
        if not d.is_dir():
            raise ModelNotFoundError(
                f"emotion2vec model folder {d} does not exist (nothing is downloaded; "
                f"put {self.default_model} there or pass --model emotion2vec=PATH)"
            )
        if not (d / "config.yaml").is_file():
            raise ModelNotFoundError(f"emotion2vec model folder {d} lacks config.yaml")
        if not (d / "model.pt").is_file():
            raise ModelNotFoundError(f"emotion2vec model folder {d} lacks model.pt")
        import yaml

        try:
            model_class = (yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}).get("model")
        except (yaml.YAMLError, AttributeError) as exc:
            raise ModelNotFoundError(f"emotion2vec model folder {d}: config.yaml is not a funasr config ({exc})") from None
        if model_class != "Emotion2vec":
            raise ModelNotFoundError(
                f"emotion2vec model folder {d}: config.yaml builds {model_class!r}, not Emotion2vec"
            )

    def _checkpoint(self) -> Path:
        """``model.pt``, the file the spec's digest covers; a configuration.json that points
        funasr at another file is refused (funasr would read a file clmer does not check)."""
        ckpt = self.model_dir / "model.pt"
        meta = self.model_dir / "configuration.json"
        try:
            named = (json.loads(meta.read_text(encoding="utf-8")).get("file_path_metas") or {}).get("init_param")
        except (OSError, ValueError, AttributeError):
            named = None
        if named and (self.model_dir / str(named)).resolve() != ckpt.resolve():
            raise ModelNotFoundError(
                f"emotion2vec model folder {self.model_dir}: configuration.json names init_param {named!r}; "
                "clmer loads model.pt only"
            )
        return ckpt

    def load(self) -> None:
        if self._model is not None:
            return
        self._check_folder()  # before funasr: a missing path would send it to the hub
        ckpt_path = self._checkpoint()
        state = load_state_safely(ckpt_path)  # before funasr too: a file that runs code stops here
        ensure_offline()
        import torch

        with contained_funasr():
            from funasr import AutoModel

            auto = AutoModel(
                model=str(self.model_dir.resolve()),
                device=self.device,
                disable_update=True,
                disable_pbar=True,
                disable_log=True,
                trust_remote_code=False,  # wins over a config.yaml asking for remote code
                ncpu=torch.get_num_threads(),  # funasr would otherwise set the process to 4 threads
                log_level="WARNING",
            )
        model = auto.model
        # funasr loads model.pt only when configuration.json names it: load it always,
        # then prove every tensor of the model is the file's
        own = model.state_dict()
        with torch.no_grad():
            model.load_state_dict(
                {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)},
                strict=False,
            )
        prove_loaded(model, state, self.name, self.model_dir, unused=TRAINING_ONLY)
        model.eval()
        self._normalize = bool(getattr(model.cfg, "normalize", False))
        self._auto, self._model = auto, model

    def unload(self) -> None:
        self._auto = self._model = None

    # --- extraction -----------------------------------------------------------
    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        self.load()
        out: list[ClipOutput | Exception] = []
        for clip in clips:  # one clip at a time: lengths differ and memory grows as T^2
            try:
                out.append(self.embed(clip_audio(clip), clip.clip_id))
            except Exception as exc:  # noqa: BLE001 - one bad clip must not stop the batch
                out.append(exc)
        return out

    def embed(self, audio: np.ndarray, clip_id: str = "clip") -> ClipOutput:
        """Frame rows, their times and the utterance vector for 16 kHz mono samples."""
        import torch
        import torch.nn.functional as F

        self.load()
        n = int(audio.shape[0])
        if n < MIN_SAMPLES:
            raise ValueError(
                f"{clip_id}: audio too short for emotion2vec ({n} samples = {n / SAMPLE_RATE * 1000:.1f} ms; "
                f"needs at least {MIN_SAMPLES} = 25 ms)"
            )
        device = next(self._model.parameters()).device
        rows: list[np.ndarray] = []
        times: list[np.ndarray] = []
        bounds = window_bounds(n, int(round(self.window_seconds * SAMPLE_RATE)))
        with torch.inference_mode():
            for a, b in bounds:
                if b - a < MIN_SAMPLES:  # cannot happen with windows >= 1 s, kept as a guard
                    continue
                source = torch.from_numpy(np.ascontiguousarray(audio[a:b])).to(device)
                if self._normalize:
                    source = F.layer_norm(source, source.shape)
                x = self._model.extract_features(source.view(1, -1), padding_mask=None)["x"][0]
                x = x.float().cpu().numpy()
                rows.append(x)
                times.append((a + np.arange(x.shape[0]) * FRAME_HOP) / SAMPLE_RATE)
        values = np.concatenate(rows, axis=0).astype(np.float32, copy=False)
        return ClipOutput(
            values=values,
            times=np.concatenate(times).astype(np.float32),
            pooled=values.mean(axis=0),  # float32 mean, as funasr computes it
        )
