"""The worker runtime: what runs one partition, in the local engine and on a Dask worker alike.

- One model cache per process, :data:`MODEL_CACHE`, keyed by :class:`ModelKey`
  (feature, resolved model folder, device, the config's canonical JSON): the
  declared settings, never a hash of a live object. A model loads at most once
  per process for a key; a Dask worker keeps its models between tasks.
- A :class:`PartitionTask` names its extractor by that key and carries the
  :class:`~clmer_features.extractors.base.RunInputs` the planner bound it with;
  the runtime binds the cached extractor again before each partition, so a
  worker reads earlier outputs (transcripts) from the store itself.
- :func:`run_partition` decodes each clip once for every media task, runs the
  extractors in batches, commits one part per task and returns a
  :class:`PartitionResult` (counts and timings only) that
  :meth:`PartitionResult.merge_into` adds to the run's summary.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from clmer_features.extractors.base import (
    ClipOutput,
    DecodedClip,
    Extractor,
    ExtractorConfig,
    FrameRequest,
    RunInputs,
    get_extractor,
)
from clmer_features.media import DecodeJob, DecodeResult, DecoderPool
from clmer_features.run_summary import FeatureStats, RunSummary

MEDIA_INPUTS = ("video", "audio")


# --------------------------------------------------------------------------- the model cache
@dataclass(frozen=True)
class ModelKey:
    """What makes two extractors the same loaded model: feature, resolved folder, device, config."""

    feature: str
    model_dir: str
    device: str
    config_json: str

    @classmethod
    def of(cls, feature: str, model_dir: Path | None, device: str, config: ExtractorConfig) -> "ModelKey":
        folder = str(Path(model_dir).resolve()) if model_dir is not None else ""
        return cls(feature, folder, device, config.to_json())


MODEL_CACHE: dict[ModelKey, Extractor] = {}
_LOADED: set[ModelKey] = set()  # keys whose load() this process has run
_LOADS: dict[str, int] = {}  # feature -> models loaded in this process
_TASKS: list[int] = [0]  # partitions run in this process
_POOL: list[DecoderPool] = []  # a worker's own DecoderPool (created on its first media task)


def cached_extractor(feature: str, model_dir: Path | None, device: str,
                     config: ExtractorConfig | None = None) -> Extractor:
    """The process-wide extractor for these settings (built, not loaded, on first use)."""
    cls = get_extractor(feature)
    config = (config if config is not None else cls.Config()).validated(feature)  # typed as the key needs
    key = ModelKey.of(feature, model_dir, device, config)
    ext = MODEL_CACHE.get(key)
    if ext is None:
        ext = cls(Path(model_dir) if model_dir is not None else None, config, device)
        MODEL_CACHE[key] = ext
    return ext


def model_key(ext: Extractor) -> ModelKey:
    return ModelKey.of(ext.name, ext.model_dir, ext.device, ext.config)


def extractor_for(key: ModelKey) -> Extractor:
    """The cached extractor ``key`` names (rebuilt from the key on a worker that lacks it)."""
    ext = MODEL_CACHE.get(key)
    if ext is not None:
        return ext
    cls = get_extractor(key.feature)
    config = cls.Config.from_params(key.feature, json.loads(key.config_json))
    return cached_extractor(key.feature, Path(key.model_dir) if key.model_dir else None, key.device, config)


def ensure_loaded(ext: Extractor) -> float:
    """Load ``ext`` if this process has not yet; the seconds it took (0.0 when cached)."""
    key = model_key(ext)
    if key in _LOADED:
        return 0.0
    t0 = time.perf_counter()
    ext.load()
    _LOADED.add(key)
    _LOADS[ext.name] = _LOADS.get(ext.name, 0) + 1
    return max(time.perf_counter() - t0, 1e-9)


def clear_model_cache() -> None:
    """Unload and forget every cached extractor and zero the counters (frees model memory in a
    long-lived process; benchmarks and tests call it on Dask workers with ``client.run``)."""
    for ext in list(MODEL_CACHE.values()):
        with contextlib.suppress(Exception):
            ext.unload()
    MODEL_CACHE.clear()
    _LOADED.clear()
    _LOADS.clear()
    _TASKS[0] = 0


def worker_counters() -> dict[str, Any]:
    """This process's model loads per feature and partitions run (read with ``client.run``)."""
    return {"loads": dict(_LOADS), "tasks": _TASKS[0], "pid": os.getpid()}


def worker_decoder_pool(decode_workers: int | None, warnings: list[str]) -> DecoderPool:
    """This worker process's DecoderPool, kept between tasks."""
    if not _POOL:
        workers = decode_workers
        if multiprocessing.current_process().daemon and workers != 0:
            # A daemonic process may not have children: decode in the worker itself.
            warnings.append("worker processes are daemonic, so clips are decoded inside the worker (no crash "
                            "isolation); start workers with DASK_DISTRIBUTED__WORKER__DAEMON=False")
            workers = 0
        _POOL.append(DecoderPool(workers=workers))
    return _POOL[0]


# --------------------------------------------------------------------------- tasks and results
@dataclass
class PartitionTask:
    """One feature's share of a partition: which model, what it was bound with, the clips to do
    and the part to write."""

    feature: str
    model: ModelKey
    inputs: RunInputs
    input: str  # the extractor's input kind: video, audio or text
    writer: Any  # store FeatureWriter
    keys: dict[str, str]  # clip_id -> clip key, only clips to do
    part_name: str


@dataclass
class PartitionResult:
    """What one partition did: counts and timings only (data went to parts)."""

    index: int
    clips: int
    stats: dict[str, FeatureStats]
    decoded: int = 0
    decode_s: float = 0.0
    decode_wait_s: float = 0.0
    decoder_restarts: int = 0
    loads: int = 0
    wall_s: float = 0.0
    worker: str = ""
    pid: int = 0
    warnings: list[str] = field(default_factory=list)

    def merge_into(self, summary: RunSummary) -> None:
        for name, s in self.stats.items():
            tot = summary.features.setdefault(name, FeatureStats())
            for f in ("done", "failed", "absent", "load_s", "model_s", "write_s"):
                setattr(tot, f, getattr(tot, f) + getattr(s, f))
        summary.decoded += self.decoded
        summary.decode_s += self.decode_s
        summary.decode_wait_s += self.decode_wait_s
        summary.decoder_restarts += self.decoder_restarts


# --------------------------------------------------------------------------- one partition
def _frame_requests(tasks: list[tuple[PartitionTask, Extractor]], clip_id: str) -> tuple[FrameRequest, ...]:
    reqs = []
    for t, ext in tasks:
        if t.input == "video" and clip_id in t.keys:
            r = ext.frame_request()
            if r is not None and r not in reqs:
                reqs.append(r)
    return tuple(reqs)


def decode_jobs(rows: list[dict[str, Any]], tasks: list[tuple[PartitionTask, Extractor]]) -> list[DecodeJob]:
    jobs = []
    for r in rows:
        cid = r["clip_id"]
        reqs = _frame_requests(tasks, cid)
        audio = any(t.input == "audio" and cid in t.keys for t, _ in tasks)
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


def run_task(feature: str, ext: Extractor, keys: dict[str, str], part: Any, clips: list[DecodedClip],
             stats: FeatureStats) -> None:
    """Run one extractor on a batch of clips and put every outcome into ``part``."""
    ready: list[DecodedClip] = []
    for c in clips:
        miss = ext.missing_input(c)
        if miss is None:
            ready.append(c)
            continue
        kind, why = miss
        error = {"absent": f"no_{ext.input}", "missing": "MissingFile"}.get(kind, "DecodeError")
        part.fail(keys[c.clip_id], c.clip_id, "decode" if ext.input in MEDIA_INPUTS else "input", error, why,
                  kind=kind)
        if kind == "absent":
            stats.absent += 1
        else:
            stats.failed += 1
    if not ready:
        return
    stats.load_s += ensure_loaded(ext)  # counted once per process, not once per run
    t0 = time.perf_counter()
    try:
        outs = ext.extract(ready)
        if len(outs) != len(ready):
            raise RuntimeError(f"{feature}: extractor returned {len(outs)} outputs for {len(ready)} clips")
    except Exception:  # noqa: BLE001 - a batch failure: find the clip(s) to blame one by one
        outs = []
        for c in ready:
            try:
                one = ext.extract([c])
                outs.append(one[0] if len(one) == 1 else RuntimeError(
                    f"{feature}: extractor returned {len(one)} outputs for 1 clip"))
            except Exception as exc:  # noqa: BLE001
                outs.append(exc)
    stats.model_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    for c, out in zip(ready, outs):
        key = keys[c.clip_id]
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
            part.add_record(key, c.clip_id, out.record, values=out.values, times=out.times)
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


def _timed_iter(it: Iterator[Any], result: PartitionResult) -> Iterator[Any]:
    while True:
        t0 = time.perf_counter()
        try:
            x = next(it)
        except StopIteration:
            return
        result.decode_wait_s += time.perf_counter() - t0
        yield x


def run_partition(
    index: int,
    rows: list[dict[str, Any]],
    tasks: list[PartitionTask],
    *,
    batch_size: int,
    pool: DecoderPool | None = None,
    on_clips: Callable[[int], None] | None = None,
) -> PartitionResult:
    """Process one partition for ``tasks`` and commit one part per task.

    Media tasks decode each clip once (frames for every frame request, audio
    once) through ``pool`` (a new one when None); text tasks need no decoding.
    Every clip ends in its part as a success or a ledger entry; an exception
    that escapes (a bug, a full disk) commits nothing, so the partition is
    simply redone next run.
    """
    t_start = time.perf_counter()
    tasks = [t for t in tasks if t.keys]
    result = PartitionResult(index=index, clips=len(rows), stats={t.feature: FeatureStats() for t in tasks},
                             pid=os.getpid())
    if not tasks:
        return result
    loads_before = sum(_LOADS.values())
    bound: list[tuple[PartitionTask, Extractor]] = []
    for t in tasks:
        ext = extractor_for(t.model)
        ext.bind(t.inputs)
        bound.append((t, ext))
    by_id = {r["clip_id"]: r for r in rows}
    todo_ids = [r["clip_id"] for r in rows if any(r["clip_id"] in t.keys for t in tasks)]
    media = any(t.input in MEDIA_INPUTS for t in tasks)
    with ExitStack() as stack:
        parts = {t.feature: stack.enter_context(t.writer.part(t.part_name)) for t in tasks}
        restarts = 0
        if media:
            if pool is None:
                pool = stack.enter_context(DecoderPool())
            restarts = pool.restarts
            jobs = decode_jobs([by_id[c] for c in todo_ids], bound)
            items: Iterable[tuple[dict[str, Any], DecodeResult | None]] = (
                (by_id[job.clip_id], res) for job, res in _timed_iter(pool.imap(jobs), result)
            )
        else:
            items = ((by_id[c], None) for c in todo_ids)
        # an extractor that wants more clips a call than the batch (packed ASR) gathers them
        want = {t.feature: ext.clips_per_call(batch_size) for t, ext in bound}
        held: dict[str, list[DecodedClip]] = {t.feature: [] for t, _ in bound}
        for batch in _batches(items, batch_size):
            clips = [_clip(row, res) for row, res in batch]
            if media:
                result.decoded += len(clips)
                result.decode_s += sum(res.seconds for _, res in batch if res is not None)
            for t, ext in bound:
                mine = held[t.feature] + [c for c in clips if c.clip_id in t.keys]
                if want[t.feature] > batch_size and len(mine) < want[t.feature]:
                    held[t.feature] = mine
                elif mine:
                    held[t.feature] = []
                    run_task(t.feature, ext, t.keys, parts[t.feature], mine, result.stats[t.feature])
            if on_clips:
                on_clips(len(clips))
        for t, ext in bound:  # the partition's last, smaller call
            if held[t.feature]:
                run_task(t.feature, ext, t.keys, parts[t.feature], held[t.feature], result.stats[t.feature])
        if media and pool is not None:
            result.decoder_restarts = pool.restarts - restarts
        t0 = time.perf_counter()
    commit_s = time.perf_counter() - t0  # parts commit when the ExitStack closes
    for t in tasks:
        result.stats[t.feature].write_s += commit_s / len(tasks)
    result.loads = sum(_LOADS.values()) - loads_before
    result.wall_s = time.perf_counter() - t_start
    _TASKS[0] += 1
    return result
