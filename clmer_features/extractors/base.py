"""The extractor contract: what an encoder receives, what it returns, how it is found.

An extractor is one module holding one class: it declares which input it needs
(``video`` frames, ``audio`` samples or ``text``), which frames it wants
(:class:`FrameRequest`), builds its :class:`FeatureSpec` without loading the
model, loads the model once, and turns a batch of :class:`DecodedClip` into one
:class:`ClipOutput` (or an exception) per clip. The engine does everything
else: planning, decoding once for all features, batching, writing parts.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

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


class Extractor(abc.ABC):
    """Base class of every extractor. Subclasses set the class variables below.

    ``__init__`` must be cheap (no model loading): the engine builds extractors
    to compute their specs and skips ``load`` entirely when nothing is missing.
    ``params`` are the settings that change the numbers; they go into the spec.
    """

    name: ClassVar[str]
    input: ClassVar[InputKind]
    default_model: ClassVar[str] = ""
    format_version: ClassVar[int] = 1

    def __init__(self, model_dir: Path, device: str = "cpu", **params: Any) -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        self.params = params

    # --- declared behaviour -------------------------------------------------
    def frame_request(self) -> FrameRequest | None:
        """Frames this extractor needs (video extractors), else None."""
        return None

    def key_family(self, row: dict[str, Any]) -> str:
        """Which cache key of a manifest row this extractor's output belongs to.

        Media extractors use the media key; a text extractor whose text comes
        from the manifest uses the text key (override when it may come from
        media, e.g. a transcript).
        """
        return "text" if self.input == "text" else "media"

    def writer_input(self) -> str:
        """The store writer's ``input`` (which manifest key column finds this feature's clips)."""
        return "text" if self.input == "text" else "media"

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

    def prepare(self, context: Any) -> None:
        """Hook called once per run before ``spec()``/planning (e.g. to find
        transcripts in the store). ``context`` is the engine's RunContext."""

    @abc.abstractmethod
    def spec(self) -> FeatureSpec:
        """The feature spec (weights digest included); must not load the model."""

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
    if not name or not isinstance(name, str):
        raise TypeError(f"{cls.__name__} has no string `name`")
    if getattr(cls, "input", None) not in ("video", "audio", "text"):
        raise TypeError(f"{cls.__name__}.input must be 'video', 'audio' or 'text'")
    existing = _REGISTRY.get(name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"extractor name {name!r} already registered by {existing.__module__}")
    _REGISTRY[name] = cls
    return cls


def get_extractor(name: str) -> type[Extractor]:
    """The registered extractor class called ``name`` (KeyError lists the known ones)."""
    from clmer_features.extractors import load_builtin

    load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown feature {name!r}; available: {', '.join(available())}") from None


def available() -> list[str]:
    """Names of all registered extractors, sorted."""
    from clmer_features.extractors import load_builtin

    load_builtin()
    return sorted(_REGISTRY)
