"""The local extraction engine: plan what is missing, decode once, batch, write parts.

``extract(manifest, features, cache_dir)`` is the whole run:

1. build each feature's extractor (no model is loaded yet) and order the
   features so that each runs after the features it ``requires`` (asr before
   bert): each step of that order is a phase;
2. plan: bind each extractor with what the planner hands over (the store and
   the specs of its requirements), build its spec, and list per feature the
   clips whose cache key (from the extractor's ``key_input``) is not in a
   committed part;
3. per phase, partitions of clips (``partition_size``) are decoded once for
   every media feature (in child processes, ahead of the model) and run
   through each extractor in batches by :mod:`clmer_features.runtime`; each
   partition becomes one part per feature (claimed with a lease first, so
   extracts sharing a cache split the work); the phase's features are then
   finalized, so the next phase can read them (bert reads asr's transcripts);
4. a :class:`RunSummary` says what was done, skipped and failed and where the
   time went.

A runner (e.g. :class:`clmer_features.distributed.DaskRunner`) may run a
phase's partitions elsewhere with the same runtime; planning and finalize
stay here. A rerun with nothing missing loads no model at all.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from clmer_features.device import resolve_device
from clmer_features.errors import ClmerError, StoreError
from clmer_features.extractors.base import Extractor, ExtractorConfig, RunInputs, get_extractor
from clmer_features.media import DecoderPool
from clmer_features.models import ensure_offline, resolve_model_dir
from clmer_features.run_summary import FeatureStats, RunSummary
from clmer_features.runtime import MEDIA_INPUTS, PartitionTask, cached_extractor, model_key, run_partition
from clmer_features.spec import FeatureSpec
from clmer_features.store.layout import row_key

DEFAULT_BATCH_SIZE = 16
DEFAULT_PARTITION_SIZE = 256

# runner(label, [(rows, tasks) per partition], summary, progress bar): runs a phase's partitions elsewhere.
PartitionRunner = Callable[[str, list[tuple[list[dict[str, Any]], list[PartitionTask]]], RunSummary, Any], None]

__all__ = ["extract", "build_extractors", "feature_configs", "keep_former_defaults", "phases", "resolve_device",
           "DEFAULT_BATCH_SIZE", "DEFAULT_PARTITION_SIZE", "FeatureStats", "RunSummary", "PartitionTask"]


# --------------------------------------------------------------------------- set-up
def build_extractors(
    features: Iterable[str],
    models_dir: str | Path | None = None,
    model_overrides: Mapping[str, str | Path] | None = None,
    device: str = "cpu",
    params: Mapping[str, Mapping[str, Any] | ExtractorConfig] | None = None,
) -> dict[str, Extractor]:
    """One (cached, unloaded) extractor per feature; ``params`` maps a feature to its parameters
    (validated by its Config: one clear line for an unknown name or a wrong value) or a config."""
    features = list(features)
    configs = feature_configs(features, params)
    out: dict[str, Extractor] = {}
    for name in features:
        cls, config = get_extractor(name), configs[name]
        model_dir = resolve_model_dir(name, models_dir, model_overrides) if cls.default_model or (
            model_overrides and name in model_overrides) else None
        out[name] = cached_extractor(name, model_dir, device, config)
    return out


def feature_configs(features: Iterable[str], params: Mapping[str, Mapping[str, Any] | ExtractorConfig] | None = None,
                    ) -> dict[str, ExtractorConfig]:
    """Each feature's config from its parameters (``{"siglip": {"frame_interval": "1"}}``: values
    as typed on a command line or already typed) or a ready config. One clear line for an unknown
    feature, parameters of a feature not asked for, an unknown parameter or a wrong value."""
    features = list(features)
    stray = sorted(set(params or {}) - set(features))
    if stray:
        raise ClmerError(f"parameters given for {', '.join(stray)}, which is not among the features {features}")
    out: dict[str, ExtractorConfig] = {}
    for name in features:
        cls = _extractor_class(name)
        given = (params or {}).get(name) or {}
        out[name] = given.validated(name) if isinstance(given, ExtractorConfig) else cls.Config.from_params(name, given)
    return out


def _extractor_class(name: str) -> type[Extractor]:
    try:
        return get_extractor(name)
    except KeyError as exc:
        raise ClmerError(str(exc.args[0])) from None


def _asked(features: Iterable[str]) -> list[str]:
    asked: list[str] = []
    for f in features:
        f = f.strip()
        if f and f not in asked:
            asked.append(f)
    return asked


def phases(features: Iterable[str], extractors: Mapping[str, Extractor] | None = None) -> list[list[str]]:
    """The asked features (deduplicated) in phases: each feature after every feature it
    ``requires`` that is also asked for; within a phase, in the order asked. A cycle raises.
    ``extractors``: built extractors, whose own ``requires`` count (a parameter may add one:
    ``clip.input=faces`` requires faces); else each class's."""
    asked = _asked(features)
    req = {f: (extractors[f].requires if extractors and f in extractors else _extractor_class(f).requires)
           for f in asked}
    deps = {f: [r for r in req[f] if r in asked and r != f] for f in asked}
    out: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(asked):
        ready = [f for f in asked if f not in placed and all(r in placed for r in deps[f])]
        if not ready:
            cycle = sorted(f for f in asked if f not in placed)
            raise ClmerError(f"features {', '.join(cycle)} require each other; no order can run them")
        out.append(ready)
        placed.update(ready)
    return out


def keep_former_defaults(ext: Extractor, config: ExtractorConfig, inputs: RunInputs, store: Any,
                         ) -> tuple[Extractor, str | None]:
    """``ext``, or the extractor of ``config`` with its changed defaults set back
    (:meth:`ExtractorConfig.former_configs`, the first whose spec the store holds) when it holds that spec (finalized or
    partly extracted) and not ``ext``'s: a cache made before a default changed is not recomputed.
    The second value is the one line that says so (None when ``ext`` is kept)."""
    formers = config.former_configs()
    if not formers:
        return ext, None
    stored = {s.spec_id for s in store.specs(ext.name)}
    if not stored or ext.spec().spec_id in stored:
        return ext, None
    for former in formers:  # fewest defaults set back first
        old = cached_extractor(ext.name, ext.model_dir, ext.device, former)
        old.bind(inputs)
        old_spec = old.spec()
        if old_spec.spec_id not in stored:
            continue
        now, then = config.as_dict(), former.as_dict()
        changed = [k for k in now if now[k] != then[k]]
        kept = ", ".join(f"{k}={_value(then[k])}" for k in changed)
        new = " ".join(f"--param {ext.name}.{k}={_value(now[k])}" for k in changed)
        return old, (f"{ext.name}: kept the spec {old_spec.spec_id} this cache holds ({kept}, the former default); "
                     f"for the new default pass {new} (a new spec, computed from scratch)")
    return ext, None


def _value(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _stored_spec(store: Any, feature: str) -> FeatureSpec | None:
    """The store's one finalized spec of ``feature`` (None when it has none, or several)."""
    try:
        return store.feature(feature).spec
    except (StoreError, KeyError):
        return None


# --------------------------------------------------------------------------- the run
def _load_manifest(manifest: Any, dataset: str | None) -> Any:
    from clmer_features.manifest import Manifest, read_manifest

    if isinstance(manifest, Manifest):
        return manifest
    return read_manifest(manifest, dataset=dataset)


def extract(
    manifest: Any,
    features: Iterable[str],
    cache_dir: str | Path,
    models_dir: str | Path | None = None,
    model_overrides: Mapping[str, str | Path] | None = None,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    retry_failed: bool = False,
    *,
    dataset: str | None = None,
    partition_size: int = DEFAULT_PARTITION_SIZE,
    decode_workers: int | None = None,
    params: Mapping[str, Mapping[str, Any] | ExtractorConfig] | None = None,
    progress: bool = True,
    runner: "PartitionRunner | None" = None,
) -> RunSummary:
    """Extract ``features`` for every clip of ``manifest`` that lacks them; see the module doc.

    ``runner`` (e.g. :class:`clmer_features.distributed.DaskRunner`) executes a
    phase's partitions elsewhere: ``runner(label, partitions, summary, bar)``
    with ``partitions`` a list of ``(rows, tasks)``; the plan and finalize stay here.
    """
    from tqdm.auto import tqdm

    from clmer_features.store import open_store, part_name
    from clmer_features.store.lease import open_leases, partition_committed, partition_lease
    from clmer_features.store.writer import stale_reason

    ensure_offline()
    t_run = time.perf_counter()
    m = _load_manifest(manifest, dataset)
    asked = _asked(features)
    if not asked:
        raise ClmerError("no features asked for (e.g. --features siglip,bert)")
    if batch_size < 1 or partition_size < 1:
        raise ClmerError("--batch-size and the partition size must be >= 1")
    dev = resolve_device(device) if runner is None else device  # a runner's workers own the device
    configs = feature_configs(asked, params)
    extractors = build_extractors(asked, models_dir, model_overrides, dev, configs)
    order = phases(asked, extractors)
    names = [n for phase in order for n in phase]
    store = open_store(cache_dir, m.dataset, create=True)
    store.write_clips(m)
    rows = m.rows()
    summary = RunSummary(dataset=m.dataset, clips=len(rows), missing_media=m.missing_count())
    prefix = f"r{time.time_ns():x}" if retry_failed else "p"

    # --- plan ------------------------------------------------------------------
    specs: dict[str, FeatureSpec] = {}
    plans: dict[str, tuple[Extractor, RunInputs, Any, dict[str, str]]] = {}
    for name in names:
        ext = extractors[name]
        needed = ((r, specs.get(r) or _stored_spec(store, r)) for r in ext.requires)
        inputs = RunInputs(store.root, tuple((r, sp) for r, sp in needed if sp is not None))
        ext.bind(inputs)
        ext, note = keep_former_defaults(ext, configs[name], inputs, store)
        if note:
            extractors[name] = ext
            summary.notes.append(note)
        spec = ext.spec()
        specs[name] = spec
        key_input = ext.key_input()
        writer = store.feature_writer(spec, input=key_input, provenance={"model": ext.provenance()})
        done = writer.done_keys(include_failed=not retry_failed)
        todo: dict[str, str] = {}
        st = FeatureStats(spec_id=spec.spec_id)
        for r in rows:
            key = row_key(r, key_input)
            if key is None:
                continue
            if key in done:
                st.skipped += 1
            else:
                todo[r["clip_id"]] = key
        st.planned = len(todo)
        summary.features[name] = st
        plans[name] = (ext, inputs, writer, todo)

    def run_phase(phase_names: list[str], pool: DecoderPool | None, label: str) -> None:
        active = [n for n in phase_names if plans[n][3]]
        if not active:
            return
        todo_rows = [r for r in rows if any(r["clip_id"] in plans[n][3] for n in active)]
        with tqdm(total=len(todo_rows), desc=f"{label} ({', '.join(active)})", unit="clip",
                  disable=not progress, leave=True) as bar:
            partitions: list[tuple[list[dict[str, Any]], list[PartitionTask]]] = []
            for start in range(0, len(todo_rows), partition_size):
                chunk = todo_rows[start:start + partition_size]
                ids = {r["clip_id"] for r in chunk}
                tasks = []
                for n in active:
                    ext, inputs, writer, todo = plans[n]
                    keys = {c: k for c, k in todo.items() if c in ids}
                    if keys:
                        tasks.append(PartitionTask(n, model_key(ext), inputs, ext.input, writer, keys,
                                                   part_name(list(keys.values()), prefix)))
                partitions.append((chunk, tasks))

            def done_elsewhere(p: tuple[list[dict[str, Any]], list[PartitionTask]]) -> None:
                for t in p[1]:  # committed by another process sharing this cache
                    summary.features[t.feature].skipped += len(t.keys)
                bar.update(len(p[0]))

            position = {id(chunk): i for i, (chunk, _) in enumerate(partitions)}
            # Leases split the partitions with other processes on this cache; parts stay the truth.
            with open_leases(store.root) as leases:
                for claimed in leases.claim(partitions, name=partition_lease, done=partition_committed,
                                            skip=done_elsewhere, window=getattr(runner, "window", 1)):
                    if runner is not None:
                        runner(label, claimed, summary, bar)
                        continue
                    for chunk, tasks in claimed:
                        run_partition(position[id(chunk)], chunk, tasks, pool=pool,
                                      batch_size=batch_size, on_clips=bar.update).merge_into(summary)

    def finalize(phase_names: list[str]) -> None:
        t0 = time.perf_counter()
        for n in phase_names:
            _, _, writer, todo = plans[n]
            if todo or stale_reason(writer.dir) is not None:  # what is on disk decides, not this run
                writer.finalize()
        summary.finalize_s += time.perf_counter() - t0

    for phase in order:
        media_names = [n for n in phase if extractors[n].input in MEDIA_INPUTS]
        # text (manifest or transcript) and input=faces encoders (crops from the store): nothing to decode
        stored_names = [n for n in phase if extractors[n].input not in MEDIA_INPUTS]
        if any(plans[n][3] for n in media_names):
            # keep two batches decoding ahead, so the model rarely waits for the decoders
            with DecoderPool(workers=decode_workers, window=2 * batch_size + 2) as pool:
                run_phase(media_names, pool, "decode+encode")
        run_phase(stored_names, None, "encode (no decoding)")
        finalize(phase)
    summary.wall_s = time.perf_counter() - t_run
    return summary
