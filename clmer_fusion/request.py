"""One request, one loader: what a fusion command reads from the cache, resolved once.

A :class:`Request` names the manifest, the store, the features (one per modality), which spec of
each, the level (utterance vectors or frame rows), the pooling, the missing-modality policy and the
target. ``open_sources(request)`` resolves it once, for every command (train, explain, bench,
r1omni, the PyTorch dataset):

- the manifest is read for ids, labels, splits, groups and languages only: no media file is opened
  or fingerprinted, so a cache and a manifest copied to a machine without the videos are enough;
  the store's ``clips.parquet`` (written at extraction) keys the clips, as the readers always did;
- ``check_fresh=True`` fingerprints the manifest's media and refuses, in one line naming the
  clips, features extracted from media (or text) that have changed since;
- each feature's spec is chosen (``spec_ids``, or the only finalized one; several give an error
  that lists each spec with the parameters in which they differ).

``load(request)`` then gives the in-memory :class:`~clmer_fusion.data.FusionData` the heads train
on: utterance vectors pooled by the store reader, or padded frame rows read through
:class:`clmer_fusion.dataset.StoreDataset` (the same path a researcher's own model uses).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl

from clmer_features.errors import ClmerError, SpecMismatchError, StoreError

LEVELS = ("utterance", "frame")
POOLS = ("mean", "max", "model")
POLICIES = ("drop", "embed")
TARGETS = ("label", "label_value")
FINGERPRINT_COLUMNS = ("clip_id", "media_key", "text_key", "label", "label_value", "split", "fold")


class StaleFeaturesError(StoreError):
    """The manifest's media (or text) changed since the cached features were extracted."""


@dataclass(frozen=True)
class Request:
    """What to read: built once per command and shared by everything the command does."""

    manifest: Path
    cache: Path | str                              # a folder, or an object-store URL (s3://bucket/prefix)
    features: tuple[str, ...]
    spec_ids: tuple[tuple[str, str], ...] = ()     # (feature, spec_id) pairs the user chose
    target: str = "label"
    level: str = "utterance"
    pool: str = "mean"                             # utterance level: mean | max | model
    missing: str = "drop"
    dataset: str | None = None
    max_frames: int = 256                          # frame level: longer clips are subsampled
    check_fresh: bool = False

    @classmethod
    def create(
        cls, manifest: str | Path, cache: str | Path, features: Sequence[str], *,
        spec_ids: Mapping[str, str] | None = None, target: str = "label", level: str = "utterance",
        pool: str = "mean", missing: str = "drop", dataset: str | None = None, max_frames: int = 256,
        check_fresh: bool = False,
    ) -> "Request":
        feats = tuple(str(f) for f in features)
        if not feats:
            raise ClmerError("give at least one feature, e.g. --features bert,emotion2vec")
        if len(set(feats)) != len(feats):
            raise ClmerError(f"a feature is named twice in {', '.join(feats)}")
        for name, value, allowed in (("level", level, LEVELS), ("pool", pool, POOLS),
                                     ("missing-modality policy", missing, POLICIES), ("target", target, TARGETS)):
            if value not in allowed:
                raise ClmerError(f"{name} must be {' or '.join(allowed)}, not {value!r}")
        chosen = dict(spec_ids or {})
        extra = sorted(set(chosen) - set(feats))
        if extra:
            raise ClmerError(f"--spec names {', '.join(extra)}, which is not among the features {', '.join(feats)}")
        return cls(manifest=Path(manifest), cache=str(cache) if "://" in str(cache) else Path(cache), features=feats,
                   spec_ids=tuple(sorted(chosen.items())), target=target, level=level, pool=pool,
                   missing=missing, dataset=dataset, max_frames=int(max_frames), check_fresh=bool(check_fresh))

    @property
    def spec_map(self) -> dict[str, str]:
        return dict(self.spec_ids)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(manifest=str(self.manifest), cache=str(self.cache), features=list(self.features),
                 spec_ids=self.spec_map)
        return d


def parse_spec_options(values: Sequence[str]) -> dict[str, str]:
    """``["bert=094219969c06", ...]`` (the ``--spec`` option) -> ``{"bert": "094219969c06"}``."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, sid = v.partition("=")
        if not sep or not name.strip() or not sid.strip():
            raise ClmerError(f"--spec {v!r}: write FEATURE=SPEC_ID, e.g. --spec bert=094219969c06")
        if name.strip() in out:
            raise ClmerError(f"--spec names {name.strip()} twice")
        out[name.strip()] = sid.strip()
    return out


# ---------------------------------------------------------------------------------- specs in words
def _words(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return " x ".join(str(v) for v in value)
        return ", ".join(_words(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{str(k).replace('_', ' ')} {_words(v)}" for k, v in value.items()) or "none"
    return str(value)


def _spec_fields(spec: Any) -> dict[str, str]:
    d = spec.to_dict()
    out = {"extractor": d["extractor"], "model": d["model_id"] or "none",
           "weights": (d["weights_digest"] or "none")[:12], "format version": str(d["format_version"])}
    for k, v in d["params"].items():
        out[k.replace("_", " ")] = _words(v)
    return out


def spec_differences(specs: Sequence[Any]) -> list[str]:
    """One line per stored spec: its id and, in words, the parameters in which the specs differ."""
    fields = [_spec_fields(s.spec) for s in specs]
    keys = sorted({k for f in fields for k in f})
    differ = [k for k in keys if len({f.get(k, "not set") for f in fields}) > 1]
    lines = []
    for s, f in zip(specs, fields):
        when = (_dt.datetime.fromtimestamp(s.finalized_ns / 1e9, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                if s.finalized_ns else "not finalized")
        what = "; ".join(f"{k} {f.get(k, 'not set')}" for k in differ) or "same parameters"
        lines.append(f"{s.feature}={s.spec_id}: {what} (finalized {when})")
    return lines


def choose_reader(store: Any, name: str, spec_id: str | None = None) -> Any:
    """The reader of one feature: the spec asked for, or the only finalized one."""
    stored = store.specs(name)
    if not stored:
        have = ", ".join(store.features()) or "none"
        raise StoreError(f"{store.root}: no feature {name!r} in the store (features: {have})")
    if spec_id is None:
        complete = [s for s in stored if s.complete]
        if len(complete) > 1:
            lines = "\n".join(f"  {line}" for line in spec_differences(complete))
            raise StoreError(
                f"{store.root}: feature {name!r} has {len(complete)} finalized specs; choose one with "
                f"--spec {name}=SPEC_ID (in a bench config: spec_ids: {{{name}: SPEC_ID}}):\n{lines}")
    else:
        match = [s for s in stored if s.spec_id == spec_id or (len(spec_id) >= 4 and s.spec_id.startswith(spec_id))]
        if len(match) != 1:
            lines = "\n".join(f"  {line}" for line in spec_differences(stored))
            what = "matches no stored spec" if not match else "matches several stored specs"
            raise SpecMismatchError(f"{store.root}: --spec {name}={spec_id} {what}; stored:\n{lines}")
        spec_id = match[0].spec_id
    reader = store.feature(name, spec_id=spec_id)
    if reader.dim == 0 and len(reader):
        if (reader.dir / "records.parquet").exists():
            raise StoreError(
                f"{name} is a table ({len(reader)} clips of records such as transcripts), not an array of "
                f"vectors: a head trains on array features (for text from {name}, extract bert, which embeds it)")
        raise StoreError(f"{name}/{reader.spec.spec_id} holds no rows for any clip")
    return reader


# ---------------------------------------------------------------------------------- sources
@dataclass
class Sources:
    """A request resolved once: the manifest's labels (no media), the store, one reader a feature."""

    request: Request
    manifest: Any                       # clmer_features.manifest.Manifest, read without media
    store: Any                          # clmer_features.store.Store
    readers: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> pl.DataFrame:
        return self.manifest.df

    @property
    def spec_ids(self) -> dict[str, str]:
        return {n: r.spec.spec_id for n, r in self.readers.items()}

    def fingerprint(self) -> str:
        """Digest of the clips, their cache keys (from the store's clips.parquet) and labels: the same
        with or without the media, and the same as ``Manifest.fingerprint()`` of a fresh manifest."""
        from clmer_features.manifest import Manifest

        df = self.labels.select([c for c in self.labels.columns if c not in ("media_key", "text_key")])
        snap = self.store.clips()
        keys = {c: pl.Utf8 for c in ("media_key", "text_key")}
        if snap is not None:
            have = snap.select("clip_id", *[pl.col(c) if c in snap.columns else pl.lit(None, pl.Utf8).alias(c)
                                            for c in keys])
            df = df.join(have, on="clip_id", how="left", maintain_order="left")
        else:
            df = df.with_columns([pl.lit(None, t).alias(c) for c, t in keys.items()])
        return Manifest(path=self.manifest.path, dataset=self.manifest.dataset, df=df).fingerprint()


def read_labels(manifest: str | Path, dataset: str | None = None) -> Any:
    """The manifest for ids, labels, splits, groups and languages: no media access."""
    from clmer_features.manifest import read_manifest

    return read_manifest(manifest, dataset, check_media=False, fingerprint=False)


def check_fresh(manifest: str | Path, store: Any, dataset: str | None = None, clip_ids: Sequence[str] | None = None) -> int:
    """Fingerprint the manifest's media and compare with the store's clips.parquet.

    Raises :class:`StaleFeaturesError` naming the clips whose media or text changed since
    extraction; returns how many clips were checked.
    """
    from clmer_features.manifest import read_manifest

    fresh = read_manifest(manifest, dataset).df
    if clip_ids is not None:
        fresh = fresh.filter(pl.col("clip_id").is_in(list(clip_ids)))
    snap = store.clips()
    if snap is None:
        raise StoreError(f"{store.root}: no clips.parquet, so nothing to check the manifest's media against")
    cols = [c for c in ("media_key", "text_key") if c in snap.columns]
    both = fresh.select("clip_id", *cols).join(snap.select("clip_id", *cols), on="clip_id", how="inner", suffix="_store")
    changed = pl.lit(False)
    for c in cols:
        changed = changed | pl.col(c).ne_missing(pl.col(f"{c}_store"))
    stale = both.filter(changed)["clip_id"].to_list()
    if stale:
        shown = ", ".join(stale[:10]) + (f" and {len(stale) - 10} more" if len(stale) > 10 else "")
        raise StaleFeaturesError(
            f"{manifest}: {len(stale)} clip(s) changed since their features were extracted into {store.root} "
            f"(media or text differ from clips.parquet): {shown}; rerun `clmer-features extract {manifest}`")
    return both.height


def open_sources(request: Request, optional: Sequence[str] = ()) -> Sources:
    """Resolve a request: read the labels, open the store, choose each feature's spec.

    A feature in ``optional`` that the store does not hold at all gets no reader (R1-Omni decodes
    from vision alone or audio alone); any other missing feature is an error.
    """
    from clmer_features.store import open_store

    man = read_labels(request.manifest, request.dataset)
    store = open_store(request.cache, man.dataset)
    if request.check_fresh:
        check_fresh(request.manifest, store, request.dataset)
    chosen = request.spec_map
    readers = {n: choose_reader(store, n, chosen.get(n)) for n in request.features
               if not (n in optional and n not in chosen and not store.specs(n))}
    return Sources(request=request, manifest=man, store=store, readers=readers)


# ---------------------------------------------------------------------------------- in memory
def load(source: Request | Sources) -> Any:
    """The request's features and targets in memory (``FusionData``), after the missing policy."""
    from clmer_fusion.data import META_COLUMNS, FusionData, encode_labels

    src = source if isinstance(source, Sources) else open_sources(source)
    req = src.request
    df = src.labels
    if req.target not in df.columns or df[req.target].null_count() == df.height:
        raise ClmerError(f"{req.manifest}: no clip has a '{req.target}' value to train on")
    labelled = df.filter(pl.col(req.target).is_not_null())
    clip_ids = labelled["clip_id"].cast(pl.Utf8).to_list()
    x: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    present = np.zeros((len(clip_ids), len(req.features)), bool)
    if req.level == "frame":
        from clmer_fusion.dataset import StoreDataset, pad

        ds = StoreDataset(src, clip_ids=clip_ids, missing="keep")
        seqs = ds.read_rows(range(len(ds)))
        for j, name in enumerate(req.features):
            x[name], masks[name] = pad(seqs[name], src.readers[name].dim, req.max_frames)
            present[:, j] = masks[name].any(1)
    else:
        for j, name in enumerate(req.features):
            feat = src.readers[name]
            rows = np.flatnonzero(feat.lengths(clip_ids) > 0)        # a clip with no rows is absent
            full = np.zeros((len(clip_ids), feat.dim), np.float32)
            if len(rows):
                full[rows] = feat.pooled([clip_ids[i] for i in rows], how=req.pool)
            x[name] = full
            present[rows, j] = True
    if req.target == "label":
        y, classes = encode_labels(labelled["label"].to_list())
        task = "classification"
    else:
        y, classes, task = labelled[req.target].cast(pl.Float32).to_numpy(), [], "regression"
    meta_cols = ["clip_id"] + [c for c in META_COLUMNS if c in labelled.columns]
    data = FusionData(
        clip_ids=clip_ids, modalities=list(req.features), x=x, present=present, y=y, task=task,
        classes=classes, meta=labelled.select(meta_cols), mask=masks if req.level == "frame" else None,
        spec_ids=src.spec_ids,
    ).apply_missing(req.missing)
    data.missing_report["no_target"] = df.height - labelled.height
    if data.n == 0:
        per = data.missing_report["missing_per_modality"]
        raise ClmerError(
            f"no clip of {req.manifest} is left to train on: with the '{req.missing}' policy a clip needs "
            + ("every feature" if req.missing == "drop" else "at least one feature")
            + f"; clips missing each: {', '.join(f'{m} {k}' for m, k in per.items())} of {len(clip_ids)}")
    return data
