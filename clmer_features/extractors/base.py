"""The extractor contract: what an encoder receives, what it returns, how it is found.

An extractor is one module holding one class and its frozen ``Config`` (fields
declared with :func:`param`, see ``config.py``): it declares which input it
needs (``video`` frames, ``audio`` samples or ``text``), which frames it wants
(:class:`FrameRequest`), which features must run before it (``requires``) and
which cache key its clips use (:meth:`Extractor.key_input`); it builds its
:class:`FeatureSpec` without loading the model, loads the model once, and turns
a batch of :class:`DecodedClip` into one :class:`ClipOutput` (or an exception)
per clip. The engine does everything else: planning, decoding once for all
features, batching, writing parts. :func:`register_preset` makes a named
feature out of an extractor with other defaults (a preset).
"""
from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, TypeVar

import numpy as np

from clmer_features.extractors.config import ExtractorConfig, ParamInfo, param  # noqa: F401 (extractor modules import them from here)
from clmer_features.spec import FeatureSpec

InputKind = Literal["video", "audio", "text"]


@dataclass(frozen=True)
class FrameRequest:
    """Which frames an extractor wants from a clip's video.

    ``interval``: one frame every ``seconds`` from the clip start (t = 0, 2, 4 ...
    within start/end); a clip shorter than the interval still gets the frame at 0.
    ``segments``: the middle frame of each of ``count`` equal segments of the clip.
    The image size is not part of it: extractors resize frames themselves.
    """

    kind: Literal["interval", "segments"] = "interval"
    seconds: float = 2.0
    count: int = 8

    def __post_init__(self) -> None:
        if self.kind not in ("interval", "segments"):
            raise ValueError(f"FrameRequest.kind must be 'interval' or 'segments', not {self.kind!r}")
        if self.kind == "interval" and not self.seconds > 0:
            raise ValueError(f"FrameRequest.seconds must be > 0, not {self.seconds}")
        if self.kind == "segments" and self.count < 1:
            raise ValueError(f"FrameRequest.count must be >= 1, not {self.count}")

    @classmethod
    def interval(cls, seconds: float = 2.0) -> "FrameRequest":
        return cls("interval", seconds=float(seconds), count=8)

    @classmethod
    def segments(cls, count: int = 8) -> "FrameRequest":
        return cls("segments", seconds=2.0, count=int(count))

    def describe(self) -> str:
        return f"every {self.seconds:g}s" if self.kind == "interval" else f"{self.count} segments"


@dataclass
class DecodedClip:
    """One clip decoded once, shared by every extractor of a run.

    ``keys`` maps an input family (``"media"``, ``"text"``) to the clip's cache
    key for it (see ``Manifest.clip_key``). ``frames`` maps each requested
    :class:`FrameRequest` to ``(frames [F, H, W, 3] uint8 RGB, times [F] seconds
    from the clip start)``; it is empty when the clip has no video. ``audio`` is
    16 kHz mono float32 or None when the clip has no audio. ``problems`` holds,
    per modality (``"video"``, ``"audio"``, ``"text"``), why it is missing:
    ``("absent", message)`` for a clip that simply has no such stream,
    ``("error", message)`` for a decoding failure.
    """

    clip_id: str
    keys: dict[str, str]
    row: dict[str, Any]
    frames: dict[FrameRequest, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    audio: np.ndarray | None = None
    duration: float | None = None
    text: str | None = None
    language: str | None = None
    problems: dict[str, tuple[str, str]] = field(default_factory=dict)

    SAMPLE_RATE: ClassVar[int] = 16000

    def key(self, family: str) -> str:
        return self.keys[family]


@dataclass
class ClipOutput:
    """What an extractor produced for one clip.

    ``values`` [T, D] rows (frames, tokens, audio frames), ``times`` [T] seconds
    from the clip start (or None), ``pooled`` [D] the model's own utterance
    vector (or None), ``record`` a table row (e.g. an ASR transcript) or None.
    """

    values: np.ndarray | None = None
    times: np.ndarray | None = None
    pooled: np.ndarray | None = None
    record: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunInputs:
    """What the planner hands an extractor in :meth:`Extractor.bind`: the dataset's store (its
    folder) and the specs of the features it ``requires`` (from this run, else the store's
    finalized one; absent when neither has it). Small and picklable: a Dask worker gets the same
    value and reads earlier outputs (e.g. transcripts) from the store itself."""

    store_root: Path  # or an ObjPath (a store on object storage)
    specs: tuple[tuple[str, FeatureSpec], ...] = ()

    def spec_of(self, feature: str) -> FeatureSpec | None:
        return dict(self.specs).get(feature)

    def store(self) -> Any:
        from clmer_features.store import Store
        from clmer_features.store.objpath import is_object

        return Store(self.store_root if is_object(self.store_root) else Path(self.store_root))


def checkpoint_provenance(model_dir: Path | None) -> dict[str, Any]:
    """What a model folder says about itself: the folder, and from its ``config.json`` the
    checkpoint's own ``_name_or_path``, ``architectures`` and ``model_type`` (when present)."""
    if model_dir is None:
        return {}
    out: dict[str, Any] = {"model_dir": str(Path(model_dir).resolve())}
    cfg = Path(model_dir) / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return out
    if isinstance(data, dict):
        for key, as_ in (("_name_or_path", "name_or_path"), ("architectures", "architectures"),
                         ("model_type", "model_type")):
            if data.get(key):
                out[as_] = data[key]
    return out


class Extractor(abc.ABC):
    """Base of every extractor. Subclasses set the class variables and a ``Config``.

    ``__init__`` is cheap (no model loading): the engine builds extractors to
    compute their specs and skips ``load`` entirely when nothing is missing.
    ``config`` holds every setting; its ``spec=True`` fields change the numbers.
    """

    name: ClassVar[str]                # feature name = store folder (a preset sets its own)
    family: ClassVar[str] = ""         # "vision-frames", "speech", "text", "asr", ... (the `features` listing)
    input: ClassVar[InputKind]
    Config: ClassVar[type[ExtractorConfig]] = ExtractorConfig
    default_model: ClassVar[str] = ""  # hub id looked up under --models-dir ("" = needs no weights)
    format_version: ClassVar[int] = 1
    requires: ClassVar[tuple[str, ...]] = ()  # features that run (and finalize) before this one
    # features required only with a parameter's value: (("input", "faces", ("faces",)),) (the `features` listing)
    requires_when: ClassVar[tuple[tuple[str, Any, tuple[str, ...]], ...]] = ()
    output: ClassVar[str] = ""         # e.g. "[T, 768] every 2 s" for the `features` listing
    preset_of: ClassVar[str | None] = None  # the family extractor a preset is made of

    def __init__(self, model_dir: Path | None, config: ExtractorConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        """``config``, or the parameters to build it from (``Cls(dir, frame_interval=1.0)``)."""
        if config is None:
            config = self.Config.from_params(self.name, params)
        elif params:
            raise TypeError(f"{self.name}: give a config or parameters, not both")
        elif not isinstance(config, self.Config):
            hint = f" (the device goes by name: {type(self).__name__}(folder, device={config!r}))" \
                if isinstance(config, str) else ""
            raise TypeError(f"{self.name}: config must be a {self.Config.__name__}, not {type(config).__name__}{hint}")
        else:
            config = config.validated(self.name)
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.config = config
        self.device = device

    # --- declared behaviour -------------------------------------------------
    def key_input(self) -> str:
        """Which key family this feature's clips are filed under: ``"media"`` or ``"text"``; a row
        without that key is filed under its other key (``store.layout.KEY_COLUMNS``, the one rule
        the planner and the store's readers share). May depend on what :meth:`bind` was given."""
        return "text" if self.input == "text" else "media"

    def bind(self, inputs: RunInputs) -> None:
        """Take what the planner hands over (the store, earlier features' specs) before ``spec()``.
        Called on the planning side and again on each worker with the same ``inputs``."""

    def frame_request(self) -> FrameRequest | None:
        """Frames this extractor needs (video extractors), else None."""
        return None

    def clips_per_call(self, batch_size: int) -> int:
        """How many clips one :meth:`extract` call should get: the run's ``batch_size``, unless the
        extractor needs more at once (packed ASR fills 30 s windows with the clips of one call)."""
        return batch_size

    def missing_input(self, clip: "DecodedClip") -> tuple[str, str] | None:
        """``(kind, why)`` when ``clip`` lacks this extractor's input, else None.

        kind is ``"absent"`` (the clip has no such modality) or ``"error"``.
        """
        if self.input == "video":
            req = self.frame_request()
            got = clip.frames.get(req) if req is not None else None
            if got is not None and len(got[0]) > 0:
                return None
            return clip.problems.get("video", ("absent", "no video"))
        if self.input == "audio":
            if clip.audio is not None and len(clip.audio) > 0:
                return None
            return clip.problems.get("audio", ("absent" if clip.audio is None else "error",
                                              "no audio" if clip.audio is None else "empty audio"))
        if clip.text is not None and clip.text.strip():
            return None
        return clip.problems.get("text", ("absent", "no text"))

    @abc.abstractmethod
    def spec(self) -> FeatureSpec:
        """The feature spec (config's spec params + constants + weights digest); never loads the model."""

    def provenance(self) -> dict[str, Any]:
        """What the model really is (not in the spec): the folder used and the checkpoint's own
        name and architecture."""
        return checkpoint_provenance(self.model_dir)

    @abc.abstractmethod
    def load(self) -> None:
        """Load the model once; calling it again does nothing."""

    @abc.abstractmethod
    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        """One output (or the exception that clip raised) per clip, in order.

        The engine records an exception in the ledger as kind "error", or as kind
        "absent" when it has an attribute ``ledger_kind = "absent"`` (the clip is
        fine but not for this model, e.g. a language an English-only model lacks).
        If the whole call raises, the engine retries the clips one by one.
        """

    def unload(self) -> None:
        """Free the model (optional)."""


# --- registry -----------------------------------------------------------------
_REGISTRY: dict[str, type[Extractor]] = {}
E = TypeVar("E", bound=type[Extractor])


def register(cls: E) -> E:
    """Class decorator: make an extractor available under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str) or "/" in name or name.startswith("."):
        raise TypeError(f"{cls.__name__} has no valid string `name`")
    if getattr(cls, "input", None) not in ("video", "audio", "text"):
        raise TypeError(f"{cls.__name__}.input must be 'video', 'audio' or 'text'")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, ExtractorConfig)):
        raise TypeError(f"{cls.__name__}.Config must be an ExtractorConfig subclass")
    cls.Config.describe()  # raises for a field type a config cannot hold
    existing = _REGISTRY.get(name)
    if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"extractor name {name!r} already registered by {existing.__module__}")
    _REGISTRY[name] = cls
    return cls


def register_preset(name: str, family: type[Extractor], *, default_model: str, params: Mapping[str, Any],
                    help: str, output: str = "") -> type[Extractor]:
    """Register feature ``name``: extractor ``family`` with another default model folder and
    other parameter defaults (validated now). Returns the preset's class."""
    config = family.Config.with_defaults(name, params)
    title = "".join(p.capitalize() for p in name.split("_")) + "Preset"
    cls = type(title, (family,), {
        "name": name, "default_model": default_model, "Config": config, "preset_of": family.name,
        "output": output or family.output, "__doc__": help, "__module__": family.__module__,
        "__qualname__": title,
    })
    return register(cls)


def get_extractor(name: str) -> type[Extractor]:
    """The registered extractor class called ``name`` (KeyError lists the known ones)."""
    from clmer_features.extractors import load_builtin

    load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown feature {name!r}; available: {', '.join(available())}") from None


def available() -> list[str]:
    """Names of all registered extractors and presets, sorted."""
    from clmer_features.extractors import load_builtin

    load_builtin()
    return sorted(_REGISTRY)
