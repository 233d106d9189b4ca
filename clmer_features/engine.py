"""The local extraction engine: plan what is missing, decode once, batch, write parts.

``extract(manifest, features, cache_dir)`` is the whole run:

1. build each feature's extractor and spec (no model is loaded yet);
2. plan: per feature, the clips whose cache key is not in a committed part;
3. media phase: partitions of clips (``partition_size``) are decoded once for
   every media feature (in child processes, ahead of the model) and run through
   each extractor in batches; each partition becomes one part per feature
   (claimed with a lease first, so extracts sharing a cache split the work);
4. the media features are finalized, then the text phase runs (``bert`` may
   need the transcripts ``asr`` just wrote), then those are finalized;
5. a :class:`RunSummary` says what was done, skipped and failed and where the
   time went.

:func:`run_partition` processes one partition and is what a Dask task calls;
models stay loaded in the module-level :data:`MODEL_CACHE` between tasks.
A rerun with nothing missing loads no model at all.
"""
from __future__ import annotations

import json
import time
import weakref
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from clmer_features.errors import ClmerError, StoreError
from clmer_features.extractors.base import ClipOutput, DecodedClip, Extractor, FrameRequest, get_extractor
from clmer_features.media import DecodeJob, DecodeResult, DecoderPool
from clmer_features.models import ensure_offline, resolve_model_dir
from clmer_features.run_summary import FeatureStats, RunSummary
from clmer_features.spec import FeatureSpec

DEFAULT_BATCH_SIZE = 16
DEFAULT_PARTITION_SIZE = 256
MEDIA_INPUTS = ("video", "audio")

# runner(label, [(rows, tasks) per partition], summary, progress bar): runs a phase's partitions elsewhere.
PartitionRunner = Callable[[str, list[tuple[list[dict[str, Any]], list["PartitionTask"]]], "RunSummary", Any], None]

# (feature, model_dir, device, params json) -> extractor instance, loaded at most once per process.
MODEL_CACHE: dict[tuple[str, str, str, str], Extractor] = {}
_LOADED: "weakref.WeakSet[Extractor]" = weakref.WeakSet()  # extractors whose load() this process has run


# --------------------------------------------------------------------------- set-up
def resolve_device(device: str = "auto") -> str:
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ClmerError(f"--device must be cpu, cuda, cuda:N or auto, not {device!r}")
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device.startswith("cuda") and not has_cuda:
        raise ClmerError(f"--device {device}: no CUDA GPU is visible to torch (use --device cpu or auto)")
    return device


def get_cached_extractor(name: str, model_dir: Path, device: str, params: Mapping[str, Any] | None = None) -> Extractor:
    """The process-wide extractor for these settings (a Dask worker keeps its models)."""
    params = dict(params or {})
    key = (name, str(Path(model_dir).resolve()), device, json.dumps(params, sort_keys=True, default=str))
    ext = MODEL_CACHE.get(key)
    if ext is None:
        ext = get_extractor(name)(Path(model_dir), device=device, **params)
        MODEL_CACHE[key] = ext
    return ext


def clear_model_cache() -> None:
    """Unload and forget every cached extractor (frees model memory in a long-lived process)."""
    for ext in list(MODEL_CACHE.values()):
        try:
            ext.unload()
        except Exception:  # noqa: BLE001 - best effort
            pass
    MODEL_CACHE.clear()
    _LOADED.clear()


def build_extractors(
    features: Iterable[str],
    models_dir: str | Path | None = None,
    model_overrides: Mapping[str, str | Path] | None = None,
    device: str = "cpu",
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Extractor]:
    features = list(features)
    stray = sorted(set(params or {}) - set(features))
    if stray:
        raise ClmerError(f"parameters given for {', '.join(stray)}, which is not among the features {features}")
    out: dict[str, Extractor] = {}
    for name in features:
        try:
            get_extractor(name)
        except KeyError as exc:
            raise ClmerError(str(exc.args[0])) from None
        model_dir = resolve_model_dir(name, models_dir, model_overrides)
        try:
            out[name] = get_cached_extractor(name, model_dir, device, (params or {}).get(name))
        except (TypeError, ValueError) as exc:
            raise ClmerError(f"{name}: {exc}") from None
    return out


def order_features(features: Iterable[str]) -> list[str]:
    """Deduplicated, media features first (asr before bert)."""
    seen: list[str] = []
    for f in features:
        f = f.strip()
        if f and f not in seen:
            seen.append(f)
    return sorted(seen, key=lambda f: (get_extractor(f).input == "text", seen.index(f)))


# --------------------------------------------------------------------------- bookkeeping
@dataclass
class RunContext:
    """What extractors may look at in ``prepare``: the manifest rows, the store, other specs."""

    rows: list[dict[str, Any]]
    store: Any
    specs: dict[str, FeatureSpec] = field(default_factory=dict)

    def spec_of(self, feature: str) -> FeatureSpec | None:
        if feature in self.specs:
            return self.specs[feature]
        try:
            return self.store.feature(feature).spec
        except (StoreError, KeyError):
            return None


@dataclass
class PartitionTask:
    """One feature's share of a partition: the clips to do and the part to write."""

    feature: str
    extractor: Extractor
    writer: Any  # store FeatureWriter
    keys: dict[str, str]  # clip_id -> clip key, only clips to do
    part_name: str


# --------------------------------------------------------------------------- one partition
def _frame_requests(tasks: list[PartitionTask], clip_id: str) -> tuple[FrameRequest, ...]:
    reqs = []
    for t in tasks:
        if t.extractor.input == "video" and clip_id in t.keys:
            r = t.extractor.frame_request()
            if r is not None and r not in reqs:
                reqs.append(r)
    return tuple(reqs)


def decode_jobs(rows: list[dict[str, Any]], tasks: list[PartitionTask]) -> list[DecodeJob]:
    jobs = []
    for r in rows:
        cid = r["clip_id"]
        reqs = _frame_requests(tasks, cid)
        audio = any(t.extractor.input == "audio" and cid in t.keys for t in tasks)
        if not reqs and not audio:
            continue
        path = r.get("video") or r.get("audio")
        jobs.append(DecodeJob(cid, path, r.get("start"), r.get("end"), reqs, audio,
                              audio_path=r.get("audio") if r.get("video") else None))
    return jobs


def _clip(row: dict[str, Any], res: DecodeResult | None = None) -> DecodedClip:
    keys = {k: row[c] for k, c in (("media", "media_key"), ("text", "text_key")) if row.get(c)}
    text = row.get("text")
    c = DecodedClip(clip_id=row["clip_id"], keys=keys, row=row, text=text if isinstance(text, str) else None,
                    language=row.get("language"))
    if res is not None:
        c.frames, c.audio, c.duration, c.problems = res.frames, res.audio, res.duration, dict(res.problems)
    if row.get("missing"):  # the manifest found no file: a ledger entry of its own kind, whatever decoding said
        c.frames, c.audio = {}, None
        c.problems.update(video=("missing", row["missing"]), audio=("missing", row["missing"]))
    return c


def _valid(out: ClipOutput) -> str | None:
    for name in ("values", "pooled"):
        v = getattr(out, name)
        if v is not None and not np.isfinite(np.asarray(v, dtype=np.float32)).all():
            return f"{name} contain NaN or inf"
    if out.values is not None and out.times is not None and len(out.times) != len(out.values):
        return f"{len(out.values)} rows but {len(out.times)} timestamps"
    if out.values is None and out.record is None and out.pooled is None:
        return "the extractor returned nothing"
    return None


def run_task(task: PartitionTask, part: Any, clips: list[DecodedClip], stats: FeatureStats) -> None:
    """Run one extractor on a batch of clips and put every outcome into ``part``."""
    ext = task.extractor
    ready: list[DecodedClip] = []
    for c in clips:
        key = task.keys[c.clip_id]
        miss = ext.missing_input(c)
        if miss is None:
            ready.append(c)
            continue
        kind, why = miss
        error = {"absent": f"no_{ext.input}", "missing": "MissingFile"}.get(kind, "DecodeError")
        part.fail(key, c.clip_id, "decode" if ext.input in MEDIA_INPUTS else "input", error, why, kind=kind)
        if kind == "absent":
            stats.absent += 1
        else:
            stats.failed += 1
    if not ready:
        return
    if ext not in _LOADED:  # count a load once per process, not once per run
        t0 = time.perf_counter()
        ext.load()
        stats.load_s += max(time.perf_counter() - t0, 1e-9)
        _LOADED.add(ext)
    t0 = time.perf_counter()
    try:
        outs = ext.extract(ready)
        if len(outs) != len(ready):
            raise RuntimeError(f"{task.feature}: extractor returned {len(outs)} outputs for {len(ready)} clips")
    except Exception:  # noqa: BLE001 - a batch failure: find the clip(s) to blame one by one
        outs = []
        for c in ready:
            try:
                one = ext.extract([c])
                outs.append(one[0] if len(one) == 1 else RuntimeError(
                    f"{task.feature}: extractor returned {len(one)} outputs for 1 clip"))
            except Exception as exc:  # noqa: BLE001
                outs.append(exc)
    stats.model_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    for c, out in zip(ready, outs):
        key = task.keys[c.clip_id]
        if isinstance(out, Exception):
            # an extractor may mark an exception as "absent" (e.g. a language its model cannot do)
            kind = "absent" if getattr(out, "ledger_kind", "error") == "absent" else "error"
            part.fail(key, c.clip_id, "model", type(out).__name__, str(out) or repr(out), kind=kind)
            if kind == "absent":
                stats.absent += 1
            else:
                stats.failed += 1
            continue
        bad = _valid(out)
        if bad:
            part.fail(key, c.clip_id, "model", "InvalidOutput", bad)
            stats.failed += 1
            continue
        if out.record is not None:
            part.add_record(key, c.clip_id, out.record, values=out.values)
        else:
            part.add(key, c.clip_id, out.values, times=out.times, pooled=out.pooled)
        stats.done += 1
    stats.write_s += time.perf_counter() - t0


def _batches(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for x in it:
        batch.append(x)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def run_partition(
    rows: list[dict[str, Any]],
    tasks: list[PartitionTask],
    stats: dict[str, FeatureStats],
    *,
    pool: DecoderPool | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    summary: RunSummary | None = None,
    on_clips: Callable[[int], None] | None = None,
) -> None:
    """Process one partition for ``tasks`` (all media or all text) and commit one part per task.

    Media tasks decode each clip once (frames for every frame request, audio
    once) through ``pool``; text tasks need no decoding. Every clip ends in its
    part as a success or a ledger entry; an exception that escapes (a bug, a
    full disk) commits nothing, so the partition is simply redone next run.
    """
    tasks = [t for t in tasks if t.keys]
    if not tasks:
        return
    by_id = {r["clip_id"]: r for r in rows}
    todo_ids = [r["clip_id"] for r in rows if any(r["clip_id"] in t.keys for t in tasks)]
    media = any(t.extractor.input in MEDIA_INPUTS for t in tasks)
    with ExitStack() as stack:
        parts = {t.feature: stack.enter_context(t.writer.part(t.part_name)) for t in tasks}
        if media:
            own_pool = pool is None
            if own_pool:
                pool = stack.enter_context(DecoderPool())
            assert pool is not None
            jobs = decode_jobs([by_id[c] for c in todo_ids], tasks)
            decoded = _timed_iter(pool.imap(jobs), summary)
            items: Iterable[tuple[dict[str, Any], DecodeResult | None]] = (
                (by_id[job.clip_id], res) for job, res in decoded
            )
        else:
            items = ((by_id[c], None) for c in todo_ids)
        for batch in _batches(items, batch_size):
            clips = [_clip(row, res) for row, res in batch]
            if summary is not None and media:
                summary.decoded += len(clips)
                summary.decode_s += sum(res.seconds for _, res in batch if res is not None)
            for t in tasks:
                mine = [c for c in clips if c.clip_id in t.keys]
                if mine:
                    run_task(t, parts[t.feature], mine, stats[t.feature])
            if on_clips:
                on_clips(len(clips))
        t0 = time.perf_counter()
    commit_s = time.perf_counter() - t0  # parts commit when the ExitStack closes
    for t in tasks:
        stats[t.feature].write_s += commit_s / len(tasks)


def _timed_iter(it: Iterator[Any], summary: RunSummary | None) -> Iterator[Any]:
    while True:
        t0 = time.perf_counter()
        try:
            x = next(it)
        except StopIteration:
            return
        if summary is not None:
            summary.decode_wait_s += time.perf_counter() - t0
        yield x


# --------------------------------------------------------------------------- the run
def _load_manifest(manifest: Any, dataset: str | None) -> Any:
    from clmer_features.manifest import Manifest, read_manifest

    if isinstance(manifest, Manifest):
        return manifest
    return read_manifest(manifest, dataset=dataset)


def _transcripts(store: Any, spec: FeatureSpec) -> dict[str, str]:
    try:
        rec = store.feature("asr", spec=spec).records()
    except StoreError:
        return {}
    if "text" not in rec.columns:
        return {}
    return {k: (t or "") for k, t in rec.select("clip_key", "text").iter_rows()}


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
    params: Mapping[str, Mapping[str, Any]] | None = None,
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
    from clmer_features.store.lease import Leases, partition_committed, partition_lease
    from clmer_features.store.writer import stale_reason

    ensure_offline()
    t_run = time.perf_counter()
    m = _load_manifest(manifest, dataset)
    names = order_features(features)
    if not names:
        raise ClmerError("no features asked for (e.g. --features siglip,bert)")
    if batch_size < 1 or partition_size < 1:
        raise ClmerError("--batch-size and the partition size must be >= 1")
    dev = resolve_device(device) if runner is None else device  # a runner's workers own the device
    extractors = build_extractors(names, models_dir, model_overrides, dev, params)
    store = open_store(cache_dir, m.dataset, create=True)
    store.write_clips(m)
    rows = m.rows()
    ctx = RunContext(rows=rows, store=store)
    summary = RunSummary(dataset=m.dataset, clips=len(rows), missing_media=m.missing_count())
    prefix = f"r{time.time_ns():x}" if retry_failed else "p"

    # --- plan ------------------------------------------------------------------
    plans: dict[str, tuple[Extractor, Any, dict[str, str]]] = {}
    for name in names:
        ext = extractors[name]
        ext.prepare(ctx)
        spec = ext.spec()
        ctx.specs[name] = spec
        writer = _feature_writer(store, spec, ext)
        done = writer.done_keys(include_failed=not retry_failed)
        todo: dict[str, str] = {}
        st = FeatureStats(spec_id=spec.spec_id)
        for r in rows:
            family = ext.key_family(r)
            if writer.input == "media" and family == "text" and ext.writer_input() != "text":
                # the store reads this feature by media key (it has no combined text-or-media
                # input yet): key every row with media by its media key so all can be read back
                family = "media"
            key = r.get("media_key" if family == "media" else "text_key")
            if key is None:
                key = r.get("media_key") or r.get("text_key")
            if key is None:
                continue
            if key in done:
                st.skipped += 1
            else:
                todo[r["clip_id"]] = key
        st.planned = len(todo)
        summary.features[name] = st
        plans[name] = (ext, writer, todo)

    def phase(phase_names: list[str], pool: DecoderPool | None, label: str) -> None:
        active = [n for n in phase_names if plans[n][2]]
        if not active:
            return
        todo_rows = [r for r in rows if any(r["clip_id"] in plans[n][2] for n in active)]
        with tqdm(total=len(todo_rows), desc=f"{label} ({', '.join(active)})", unit="clip",
                  disable=not progress, leave=True) as bar:
            partitions: list[tuple[list[dict[str, Any]], list[PartitionTask]]] = []
            for start in range(0, len(todo_rows), partition_size):
                chunk = todo_rows[start:start + partition_size]
                ids = {r["clip_id"] for r in chunk}
                tasks = []
                for n in active:
                    ext, writer, todo = plans[n]
                    keys = {c: k for c, k in todo.items() if c in ids}
                    if keys:
                        tasks.append(PartitionTask(n, ext, writer, keys, part_name(list(keys.values()), prefix)))
                partitions.append((chunk, tasks))

            def done_elsewhere(p: tuple[list[dict[str, Any]], list[PartitionTask]]) -> None:
                for t in p[1]:  # committed by another process sharing this cache
                    summary.features[t.feature].skipped += len(t.keys)
                bar.update(len(p[0]))

            # Leases split the partitions with other processes on this cache; parts stay the truth.
            with Leases(store.root) as leases:
                for claimed in leases.claim(partitions, name=partition_lease, done=partition_committed,
                                            skip=done_elsewhere, window=getattr(runner, "window", 1)):
                    if runner is not None:
                        runner(label, claimed, summary, bar)
                        continue
                    for chunk, tasks in claimed:
                        run_partition(chunk, tasks, summary.features, pool=pool, batch_size=batch_size,
                                      summary=summary, on_clips=bar.update)

    def finalize(phase_names: list[str]) -> None:
        t0 = time.perf_counter()
        for n in phase_names:
            _, writer, todo = plans[n]
            if todo or stale_reason(writer.dir) is not None:  # what is on disk decides, not this run
                writer.finalize()
        summary.finalize_s += time.perf_counter() - t0

    media_names = [n for n in names if extractors[n].input in MEDIA_INPUTS]
    text_names = [n for n in names if extractors[n].input == "text"]
    if any(plans[n][2] for n in media_names):
        # keep two batches decoding ahead, so the model rarely waits for the decoders
        with DecoderPool(workers=decode_workers, window=2 * batch_size + 2) as pool:
            phase(media_names, pool, "decode+encode")
            summary.decoder_restarts = pool.restarts
    finalize(media_names)
    for n in text_names:
        ext = extractors[n]
        asr_spec = ctx.specs.get("asr") or ctx.spec_of("asr")
        if getattr(ext, "uses_asr", False) and asr_spec is not None and hasattr(ext, "set_transcripts"):
            ext.set_transcripts(_transcripts(store, asr_spec))
    phase(text_names, None, "text")
    finalize(text_names)
    summary.wall_s = time.perf_counter() - t_run
    return summary


def _feature_writer(store: Any, spec: FeatureSpec, ext: Extractor) -> Any:
    want = ext.writer_input()
    try:
        return store.feature_writer(spec, input=want)
    except ValueError:
        # The store does not know the combined input yet: fall back to the media key family.
        return store.feature_writer(spec, input="media" if want == "text_or_media" else want)
