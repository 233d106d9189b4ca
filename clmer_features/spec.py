"""Feature specs: the declared cache key of a feature.

A spec says everything that changes the numbers a feature holds: the extractor,
the model and a digest of its weight files, the numeric parameters and the
extractor's format version. Its ``spec_id`` is a short hash of its canonical
JSON. Batch size, device and paths never go in: they do not change the
numbers, and a key that held them would split one cache into many.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

# Parameter names that describe *how* or *where* a run happens, not *what* it
# computes. Putting one in a spec is a bug in the extractor: refuse it loudly.
FORBIDDEN_PARAMS = frozenset(
    {
        "batch_size",
        "device",
        "devices",
        "num_workers",
        "workers",
        "path",
        "model_path",
        "models_dir",
        "cache",
        "cache_dir",
    }
)

SPEC_ID_LENGTH = 12


def _canonical_value(value: Any, where: str) -> Any:
    """Reduce a parameter value to plain JSON types, refusing anything else."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"spec parameter {where!r} is not a finite number: {value}")
        # repr round-trips exactly; 2.0 and 2 stay distinct types on purpose
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _canonical_value(v, f"{where}.{k}") for k, v in sorted(value.items())}
    raise TypeError(
        f"spec parameter {where!r} has type {type(value).__name__}; "
        "only None, bool, int, float, str, lists and dicts go into a spec"
    )


@dataclass(frozen=True)
class FeatureSpec:
    """A frozen, hashable description of one feature's numbers.

    ``feature`` is the store folder name (``siglip``); ``extractor`` the
    registered extractor that made it (the same name unless a variant);
    ``params`` every parameter that changes the numbers.
    """

    feature: str
    extractor: str
    model_id: str
    weights_digest: str
    format_version: int
    params_json: str = field(default="{}", repr=False)

    @classmethod
    def create(
        cls,
        feature: str,
        *,
        extractor: str | None = None,
        model_id: str = "",
        weights_digest: str = "",
        format_version: int = 1,
        params: Mapping[str, Any] | None = None,
    ) -> "FeatureSpec":
        params = dict(params or {})
        bad = sorted(FORBIDDEN_PARAMS.intersection(params))
        if bad:
            raise ValueError(
                f"spec for {feature!r} must not contain run settings {bad}: "
                "batch size, device and paths do not change the numbers"
            )
        if not feature or "/" in feature or feature.startswith("."):
            raise ValueError(f"invalid feature name {feature!r}")
        canon = _canonical_value(params, "params")
        return cls(
            feature=feature,
            extractor=extractor or feature,
            model_id=model_id,
            weights_digest=weights_digest,
            format_version=int(format_version),
            params_json=json.dumps(canon, sort_keys=True, separators=(",", ":")),
        )

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "extractor": self.extractor,
            "model_id": self.model_id,
            "weights_digest": self.weights_digest,
            "format_version": self.format_version,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureSpec":
        return cls.create(
            data["feature"],
            extractor=data.get("extractor"),
            model_id=data.get("model_id", ""),
            weights_digest=data.get("weights_digest", ""),
            format_version=data.get("format_version", 1),
            params=data.get("params") or {},
        )

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def spec_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:SPEC_ID_LENGTH]

    def describe(self) -> str:
        """One line a person can compare with another spec's line."""
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        digest = self.weights_digest[:12] or "-"
        return (
            f"{self.feature}/{self.spec_id} (extractor={self.extractor} v{self.format_version}, "
            f"model={self.model_id or '-'}, weights={digest}, {params or 'no params'})"
        )

    def diff(self, other: "FeatureSpec") -> list[str]:
        """Fields that differ, as 'name: mine != theirs' lines."""
        a, b = self.to_dict(), other.to_dict()
        pa, pb = a.pop("params"), b.pop("params")
        out = [f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b[k]]
        for k in sorted(set(pa) | set(pb)):
            if pa.get(k, "<absent>") != pb.get(k, "<absent>"):
                out.append(f"params.{k}: {pa.get(k, '<absent>')!r} != {pb.get(k, '<absent>')!r}")
        return out
