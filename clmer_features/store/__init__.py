"""The versioned feature store: ``open_store(cache_dir, dataset).feature("siglip").get(clip_id)``.

Light on purpose (numpy, zarr, polars): ``clmer_fusion`` reads caches through
this module without torch's encoders, decord or funasr.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from clmer_features.errors import SpecMismatchError, StoreError
from clmer_features.spec import FeatureSpec
from clmer_features.store import layout as L
from clmer_features.store.objpath import StorePath, cache_root, is_object
from clmer_features.store.reader import CorruptDataError, FeatureReader, StoreLike
from clmer_features.store.writer import FeatureWriter, FinalizeSummary, PartWriter, finalize_feature, part_name

if TYPE_CHECKING:
    from clmer_features.manifest import Manifest

__all__ = [
    "open_store",
    "Store",
    "FeatureReader",
    "CorruptDataError",
    "FeatureWriter",
    "PartWriter",
    "FinalizeSummary",
    "StoredSpec",
    "part_name",
]

DEFAULT_CACHE = "cache"


@dataclass(frozen=True)
class StoredSpec:
    feature: str
    spec: FeatureSpec
    path: StorePath
    complete: bool
    finalized_ns: int

    @property
    def spec_id(self) -> str:
        return self.spec.spec_id


class Store(StoreLike):
    """One dataset's cache: ``<cache_dir>/<dataset>/`` (a local folder or an object-store prefix)."""

    def __init__(self, root: StorePath, clips: pl.DataFrame | None = None):
        """``clips`` overrides the manifest snapshot (e.g. to ask about a manifest not yet extracted)."""
        self.root = root
        self._keys: pl.DataFrame | None | bool = False if clips is None else clips

    @property
    def dataset(self) -> str:
        return self.root.name

    # ------------------------------------------------------------------ manifest snapshot
    def write_clips(self, manifest: "Manifest") -> None:
        """Snapshot the manifest (ids, cache keys, fingerprints, segments, labels)."""
        L.atomic_write_parquet(self.root / L.CLIPS_FILE, manifest.df)
        self._keys = False

    def clips(self) -> pl.DataFrame | None:
        path = self.root / L.CLIPS_FILE
        try:
            return L.read_parquet(path)
        except FileNotFoundError:
            return None

    def current_keys(self, input: str) -> pl.DataFrame | None:
        """clip_id -> clip_key for a feature whose clips use ``input`` keys ('media', 'text' or
        'text_or_media'), from the manifest snapshot (layout.KEY_COLUMNS: the one rule)."""
        if self._keys is False:
            self._keys = self.clips()
        clips = self._keys
        if clips is None:
            return None
        key = pl.coalesce(*L.key_columns(input))
        return clips.select("clip_id", key.alias("clip_key")).drop_nulls("clip_key")

    # ------------------------------------------------------------------ features
    def specs(self, feature: str | None = None) -> list[StoredSpec]:
        """Every spec stored (finalized or not), oldest finalize first."""
        base = self.root / L.FEATURES_DIR
        out: list[StoredSpec] = []
        obj = is_object(base)
        if not obj and not base.is_dir():
            return out
        for fdir in sorted(base.iterdir()):
            if (not obj and not fdir.is_dir()) or fdir.name == L.ZARR_JSON or (feature is not None and fdir.name != feature):
                continue
            for sdir in sorted(fdir.iterdir()):
                if sdir.name == L.ZARR_JSON or sdir.name.startswith(L.TMP_PREFIX) or not (sdir / "zarr.json").is_file():
                    continue
                spec = FeatureSpec.from_dict(L.node_attrs(sdir)["spec"])
                complete = sdir / L.COMPLETE_FILE
                ns = L.read_json(complete).get("finalized_ns", 0) if complete.exists() else 0
                out.append(StoredSpec(fdir.name, spec, sdir, complete.exists(), ns))
        return sorted(out, key=lambda s: (s.feature, s.finalized_ns))

    def features(self) -> list[str]:
        return sorted({s.feature for s in self.specs()})

    def feature(self, name: str, spec: FeatureSpec | None = None, spec_id: str | None = None) -> FeatureReader:
        """A reader for a finalized feature.

        With ``spec`` (or ``spec_id``) the stored spec must be exactly that one;
        without, the feature must hold exactly one finalized spec.
        """
        stored = self.specs(name)
        if not stored:
            have = ", ".join(self.features()) or "none"
            raise StoreError(f"{self.root}: no feature {name!r} in the store (features: {have})")
        want = spec.spec_id if spec is not None else spec_id
        if want is not None:
            match = [s for s in stored if s.spec_id == want]
            if not match:
                lines = "\n".join(f"  stored:    {s.spec.describe()}" for s in stored)
                asked = spec.describe() if spec is not None else f"{name}/{spec_id}"
                diff = ""
                if spec is not None:
                    diff = "\n  differs in: " + "; ".join(stored[-1].spec.diff(spec) or ["?"])
                raise SpecMismatchError(f"{self.root}: feature {name!r} is not stored with the spec asked for\n  asked for: {asked}\n{lines}{diff}")
            return FeatureReader(self, name, match[0].spec_id)
        complete = [s for s in stored if s.complete]
        if not complete:
            return FeatureReader(self, name, stored[-1].spec_id)  # raises: not finalized
        if len(complete) > 1:
            lines = "\n".join(f"  {s.spec.describe()}" for s in complete)
            raise StoreError(
                f"{self.root}: feature {name!r} has {len(complete)} specs; name one (spec_id=...), "
                f"or remove old ones with `clmer-features gc --superseded`:\n{lines}"
            )
        return FeatureReader(self, name, complete[0].spec_id)

    def feature_writer(self, spec: FeatureSpec, input: str = "media", provenance: dict | None = None) -> FeatureWriter:
        """A writer for ``spec``; ``input`` says which cache key the clips use ('media' or
        'text'); ``provenance`` entries are merged into the feature's attributes."""
        self.root.mkdir(parents=True, exist_ok=True)
        return FeatureWriter(self.root, spec, input=input, provenance=provenance)

    def finalize(self, feature: str, spec_id: str) -> FinalizeSummary:
        return finalize_feature(self.root, feature, spec_id)

    def ledger(self) -> pl.DataFrame:
        try:
            return L.read_parquet(self.root / L.LEDGER_FILE)
        except FileNotFoundError:
            return L.empty_ledger()

    def __repr__(self) -> str:
        return f"<Store {self.root}: {', '.join(self.features()) or 'empty'}>"


def open_store(cache_dir: str | os.PathLike[str] | None, dataset: str, create: bool = False) -> Store:
    """Open ``<cache_dir>/<dataset>``; ``create`` makes the folder, otherwise it must exist.
    ``cache_dir`` may be ``s3://bucket/prefix`` (see store/objpath.py); other URLs are refused."""
    root = cache_root(cache_dir if cache_dir is not None else os.environ.get("CLMER_CACHE", DEFAULT_CACHE)) / dataset
    if create:
        root.mkdir(parents=True, exist_ok=True)
    elif not (root / L.ZARR_JSON).is_file() and not root.is_dir():
        raise StoreError(f"no store at {root} (extract features first, or check --cache and --dataset)")
    if create:
        L.ensure_dataset(root)
    elif (root / L.ZARR_JSON).exists():  # format 1 stores have none
        L.check_format(L.node_attrs(root), root)
    return Store(root.resolve())
