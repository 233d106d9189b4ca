"""Extractor configs: one frozen dataclass per extractor, every field declared with :func:`param`.

A field either changes the numbers (``spec=True``: it goes into the feature
spec, so another value is another cache) or only says how the run goes
(``spec=False``: batch sizes and the like, never in the spec). Everything the
rest of the system needs comes from that declaration: ``--param`` parsing and
validation (:meth:`ExtractorConfig.from_params`), the spec parameters
(:meth:`~ExtractorConfig.spec_params`), the model-cache key
(:meth:`~ExtractorConfig.to_json`) and the ``features`` listing
(:meth:`~ExtractorConfig.describe`).

A spec field whose default changed declares the default it had before
(``former_default``): a config remembers which fields were given explicitly
(:attr:`~ExtractorConfig.given`), and :meth:`~ExtractorConfig.former_configs`
are the same config with fields left to a changed default set back to the
former one (each set of them, when several defaults changed). The engine uses it so that a store made before the change keeps its
spec (nothing recomputed) unless the new value is asked for; explicit values
always win.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from clmer_features.errors import ParameterError

_SIMPLE = (bool, int, float, str)
_NONE = object()  # no former default


def param(default: Any, help: str, *, spec: bool = True, choices: tuple = (), minimum: Any = None,
          former_default: Any = _NONE) -> Any:
    """A config field. ``spec=True``: it changes the numbers, so it goes into the feature spec;
    ``spec=False``: a run-only setting (batch sizes ...), never in the spec.
    ``choices``: the allowed values (empty: any of the field's type); ``minimum``: the smallest
    allowed number. ``former_default``: the default this spec field had before its default
    changed; a store holding the spec made with it keeps that spec when the field is not given
    (:meth:`ExtractorConfig.former_configs`)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("a param default must be immutable (use a tuple)")
    meta = {"help": help, "spec": bool(spec), "choices": tuple(choices), "minimum": minimum}
    if former_default is not _NONE:
        if not spec or former_default == default:
            raise TypeError("former_default is for a spec field whose default changed")
        meta["former_default"] = former_default
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamInfo:
    """One config field as the ``features`` listing and ``--help`` show it."""

    name: str
    type: str
    default: Any
    help: str
    spec: bool
    choices: tuple = ()
    minimum: Any = None
    former_default: Any = _NONE

    @property
    def default_changed(self) -> bool:
        """The default was another value before (``former_default``)."""
        return self.former_default is not _NONE

    def allowed(self) -> str:
        """The allowed values in words: ``'cls' or 'pooler'``, ``a number >= 0.1``, ``an integer``."""
        if self.choices:
            return " or ".join(json.dumps(c) if c is not None else "null" for c in self.choices)
        kind = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}
        base = " or ".join(kind.get(t, t) for t in self.type.split(" | ") if t != "None")
        if self.minimum is not None:
            base += f" >= {self.minimum:g}"
        return base + (" or null" if "None" in self.type.split(" | ") else "")


def _field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Field name -> the plain types it accepts (``int | None`` -> (int, NoneType))."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[type, ...]] = {}
    for f in dataclasses.fields(cls):
        t = hints.get(f.name, Any)
        args = typing.get_args(t) if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union else (t,)
        if not all(a in _SIMPLE or a is type(None) for a in args):
            raise TypeError(f"{cls.__name__}.{f.name}: a config field is bool, int, float, str or one of "
                            f"them | None, not {t}")
        out[f.name] = tuple(args)
    return out


def _type_name(types_: tuple[type, ...]) -> str:
    return " | ".join("None" if t is type(None) else t.__name__ for t in types_)


def _coerce(value: Any, types_: tuple[type, ...]) -> Any:
    """``value`` as one of ``types_`` (an int for a float field, ``"2"`` for an int field ...);
    raises ValueError when it is none of them."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if type(None) in types_:
            return None
        raise ValueError
    for t in types_:
        if t is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
        elif t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    return int(value.strip())
                except ValueError:
                    pass
        elif t is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
            if isinstance(value, str):
                try:
                    f = float(value.strip())
                except ValueError:
                    continue
                if math.isfinite(f):
                    return f
        elif t is str and isinstance(value, str):
            return value
    raise ValueError


@dataclass(frozen=True)
class ExtractorConfig:
    """Base of every extractor's config (a frozen dataclass whose fields use :func:`param`).

    A config remembers the fields it was given (:attr:`given`: the keyword and positional
    arguments of the constructor, the names passed to :meth:`from_params`); the rest took
    their default. ``dataclasses.replace`` passes every field, so its result has all given.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "ExtractorConfig":
        self = super().__new__(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        object.__setattr__(self, "_given", frozenset(names[:len(args)]) | frozenset(kwargs))
        return self

    @property
    def given(self) -> frozenset[str]:
        """The fields set explicitly (not left to their default)."""
        return getattr(self, "_given", frozenset())

    def _as_given(self, given: frozenset[str]) -> "ExtractorConfig":
        object.__setattr__(self, "_given", frozenset(given))
        return self

    @classmethod
    def from_params(cls, feature: str, params: Mapping[str, Any]) -> "ExtractorConfig":
        """The config for ``params`` (name -> value, e.g. from ``--param``), values validated and
        coerced (an int where a float is wanted is fine). Raises :class:`ParameterError` with one
        line naming the feature, the parameter and the allowed values."""
        types_ = _field_types(cls)
        infos = {i.name: i for i in cls.describe()}
        unknown = [k for k in params if k not in types_]
        if unknown:
            known = ", ".join(types_) or "none"
            raise ParameterError(f"{feature}: unknown parameter {unknown[0]!r} (parameters: {known})")
        values: dict[str, Any] = {}
        for name, raw in params.items():
            info = infos[name]
            try:
                value = _coerce(raw, types_[name])
                if info.choices and value not in info.choices:
                    raise ValueError
                if info.minimum is not None and value is not None and value < info.minimum:
                    raise ValueError
            except ValueError:
                raise ParameterError(f"{feature}.{name}: expected {info.allowed()}, got {raw!r}") from None
            values[name] = value
        return cls(**values)

    def validated(self, feature: str) -> "ExtractorConfig":
        """This config checked as :meth:`from_params` checks (for configs built directly); the
        fields given stay those of this config."""
        return type(self).from_params(feature, self.as_dict())._as_given(self.given)

    def former_configs(self) -> list["ExtractorConfig"]:
        """This config with fields whose default changed (``former_default``) and that were not
        given set back to their former default: every non-empty set of such fields, fewest set
        back first (nearest the new defaults), then the later-declared fields first (a field
        declared later changed its default later, as ``asr.repack`` after ``asr.pack``); empty
        when no field is such. The engine runs the
        first whose spec the store holds, where it does not hold this one's."""
        changed = [f.name for f in dataclasses.fields(self)
                   if "former_default" in f.metadata and f.name not in self.given]
        fields = {f.name: f for f in dataclasses.fields(self)}
        out: list[ExtractorConfig] = []
        for n in range(1, len(changed) + 1):
            for names in reversed(list(itertools.combinations(changed, n))):
                back = {k: fields[k].metadata["former_default"] for k in names}
                out.append(dataclasses.replace(self, **back)._as_given(self.given))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def spec_params(self) -> dict[str, Any]:
        """The fields that change the numbers (``spec=True``), for the feature spec."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("spec", True)}

    def run_params(self) -> dict[str, Any]:
        """The run-only fields (``spec=False``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("spec", True)}

    def to_json(self) -> str:
        """Canonical JSON of every field: the config part of the model-cache key."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def describe(cls) -> list[ParamInfo]:
        """Every field: name, type, default, help, whether it changes the spec, allowed values."""
        types_ = _field_types(cls)
        return [
            ParamInfo(f.name, _type_name(types_[f.name]), f.default, f.metadata.get("help", ""),
                      bool(f.metadata.get("spec", True)), tuple(f.metadata.get("choices", ())),
                      f.metadata.get("minimum"), f.metadata.get("former_default", _NONE))
            for f in dataclasses.fields(cls)
        ]

    @classmethod
    def with_defaults(cls, name: str, defaults: Mapping[str, Any]) -> type["ExtractorConfig"]:
        """A subclass whose fields named in ``defaults`` default to those values (a preset's config).
        ``defaults`` are validated like ``--param`` values; ``name`` names the preset in errors.
        A field the preset sets has no former default (the preset's value is its own)."""
        checked = cls.from_params(name, defaults)
        types_ = _field_types(cls)
        fields = []
        for f in dataclasses.fields(cls):
            if f.name in defaults:
                t = typing.Union[types_[f.name]] if len(types_[f.name]) > 1 else types_[f.name][0]
                meta = {k: v for k, v in f.metadata.items() if k != "former_default"}
                fields.append((f.name, t, dataclasses.field(default=getattr(checked, f.name), metadata=meta)))
        title = "".join(p.capitalize() for p in name.split("_")) + "Config"
        return dataclasses.make_dataclass(title, fields, bases=(cls,), frozen=True,
                                          namespace={"__module__": cls.__module__})
