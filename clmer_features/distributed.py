"""Extraction on Dask: the same plan, parts and finalize as the local engine, partitions run on workers.

``extract_distributed(manifest, features, cache, workers=N)`` starts a local
cluster of N worker processes on this machine; ``scheduler="tcp://host:8786"``
uses a running cluster instead. The engine plans exactly as in-process
(:func:`clmer_features.engine.extract` with a :class:`DaskRunner`), so spec ids,
part names and numbers are the same; only *where* each partition runs changes.

- One Dask task per partition of clips (a whole part), never one per clip.
- A worker runs a partition with :mod:`clmer_features.runtime`, as the local
  engine does: its model cache (an importable module, so it survives between
  tasks) is keyed by feature, model folder, device and config JSON, so a model
  loads once per worker. A task carries that key and the planner's bound
  inputs, never a pickled extractor; earlier outputs (transcripts) are read
  from the store by the worker itself.
- ``device="cuda"`` asks for ``resources={"GPU": 1}`` per task; workers must
  offer it (``dask worker ... --resources GPU=1``).
- A task that raises is retried (``retries``); a worker that dies has its task
  rescheduled by the scheduler. Parts are written to a temporary folder and
  renamed into place, a duplicated task's part is discarded, and finalize runs
  once on the client, so the store stays consistent whatever happens. A
  partition that still fails leaves its clips missing: the run finalizes what
  was done, says so, and a rerun computes only what is missing.

Workers return small results (counts and timings); data goes to parts.
The store's folder must be the same path on the client and every worker, or an object-store
URL (``s3://bucket/prefix``) that they all reach with their ``AWS_*`` variables.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from distributed.diagnostics.plugin import WorkerPlugin

from clmer_features import runtime
from clmer_features.device import cuda_available, resolve_device
from clmer_features.engine import DEFAULT_BATCH_SIZE, PartitionTask, RunSummary, extract
from clmer_features.errors import ClmerError
from clmer_features.runtime import PartitionResult

# --------------------------------------------------------------------------- worker side


def run_partition_task(
    index: int,
    rows: list[dict[str, Any]],
    tasks: list[PartitionTask],
    batch_size: int,
    decode_workers: int | None,
    torch_threads: int | None = None,
) -> PartitionResult:
    """One Dask task: run one partition with this worker's runtime and commit its parts."""
    from clmer_features.models import ensure_offline

    ensure_offline()
    if torch_threads:
        import torch

        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
    warnings: list[str] = []
    media = any(t.input in runtime.MEDIA_INPUTS for t in tasks)
    pool = runtime.worker_decoder_pool(decode_workers, warnings) if media else None
    result = runtime.run_partition(index, rows, tasks, batch_size=batch_size, pool=pool)
    try:
        from distributed import get_worker

        result.worker = get_worker().address
    except (ImportError, ValueError):
        pass
    result.warnings = warnings
    return result


# --------------------------------------------------------------------------- client side
@dataclass
class PartitionFailure:
    label: str
    index: int
    parts: list[str]
    error: str


class DaskRunner:
    """Runs the engine's partitions as Dask tasks (pass it as ``extract(..., runner=...)``)."""

    def __init__(self, client: Any, *, batch_size: int = DEFAULT_BATCH_SIZE, decode_workers: int | None = None,
                 gpu: bool = False, retries: int = 2, torch_threads: int | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        """``torch_threads``: torch intra-op threads for the numeric work in each worker; default:
        this process's count, the one an in-process run uses. On CPU the last bit of a value can
        depend on it (fp16 emotion2vec differed by up to 2e-3 between 1 and 2 threads), so with
        the default a Dask run gives the same numbers as an in-process run, bit for bit, on the
        same kind of machine."""
        if torch_threads is None:
            import torch

            torch_threads = torch.get_num_threads()
        self.client = client
        self.torch_threads = torch_threads
        self.batch_size = batch_size
        self.decode_workers = decode_workers
        self.gpu = gpu
        self.retries = retries
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.token = uuid.uuid4().hex[:8]
        self.partitions_run = 0  # partitions submitted over the whole run
        self.results: list[PartitionResult] = []
        self.failures: list[PartitionFailure] = []
        self._warned: set[str] = set()

    def __call__(self, label: str, partitions: list[tuple[list[dict[str, Any]], list[PartitionTask]]],
                 summary: RunSummary, bar: Any) -> None:
        from distributed import as_completed

        partitions = [(rows, tasks) for rows, tasks in partitions if any(t.keys for t in tasks)]
        if not partitions:
            return
        if any(f.label != label for f in self.failures):  # an earlier phase failed: do not build on it
            raise self.error(summary, before=label)
        resources = {"GPU": 1} if self.gpu else None
        futures = {}
        for i, (rows, tasks) in enumerate(partitions, start=self.partitions_run):
            light = [t for t in tasks if t.keys]
            # A key never used before in this run: the engine hands partitions over in leased batches,
            # and a key reused by the next batch would be answered with the earlier batch's result
            # while the scheduler still holds it (the partition then looks done but was never run).
            fut = self.client.submit(
                run_partition_task, i, rows, light, self.batch_size, self.decode_workers, self.torch_threads,
                key=f"clmer-{self.token}-{label.split()[0]}-{i}", pure=False, retries=self.retries,
                resources=resources,
            )
            futures[fut] = (i, rows, light)
        self.partitions_run += len(futures)
        done = 0
        for fut in as_completed(list(futures)):
            i, rows, light = futures[fut]
            try:
                res: PartitionResult = fut.result()
            except Exception as exc:  # noqa: BLE001 - the run goes on; the clips stay missing
                self.failures.append(PartitionFailure(label, i, [t.part_name for t in light],
                                                      f"{type(exc).__name__}: {exc}"))
                self.log(f"partition {i} ({len(rows)} clips) failed after {self.retries} retries: "
                         f"{type(exc).__name__}: {exc}")
            else:
                self._merge(res, summary)
            done += 1
            bar.set_postfix_str(f"{done}/{len(futures)} partitions", refresh=False)
            bar.update(len(rows))
            fut.release()

    @property
    def window(self) -> int:
        """Partitions the engine leases and hands over at a time: two per worker keeps every
        worker busy, and leaves the rest to other clients sharing the cache."""
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return 2 * max(1, len(workers))

    def _merge(self, res: PartitionResult, summary: RunSummary) -> None:
        self.results.append(res)
        res.merge_into(summary)
        for w in res.warnings:
            if w not in self._warned:
                self._warned.add(w)
                self.log(f"warning: {w}")

    def error(self, summary: RunSummary, before: str | None = None) -> ClmerError:
        f = self.failures
        what = f"; {before} was not run" if before else ""
        return ClmerError(
            f"{summary.format()}\n{len(f)} partition(s) failed after {self.retries} retries{what}; their clips "
            f"are not in the store, everything else is (rerun to retry them). First: partition {f[0].index} "
            f"({f[0].label}): {f[0].error}"
        )


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, *, gpu: bool = False,
                log: Callable[[str], None] | None = None) -> Iterator[Any]:
    """A Client on ``scheduler``, or on a new local cluster of ``workers`` processes (closed on exit)."""
    import dask
    from distributed import Client, LocalCluster

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if (workers is None) == (scheduler is None):
        raise ClmerError("give either --workers N (a local Dask cluster) or --scheduler ADDRESS, not both")
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as exc:
            raise ClmerError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        with client:
            yield client
        return
    if workers is None or workers < 1:
        raise ClmerError(f"--workers must be >= 1, not {workers}")
    gpus = _visible_gpus() if gpu else []
    log(f"starting a local Dask cluster of {workers} worker process(es)"
        + (f" on GPU(s) {','.join(gpus)}" if gpus else ""))
    # Non-daemonic workers may start decoder processes (crash isolation, see media.DecoderPool).
    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               resources={"GPU": 1} if gpu else None, dashboard_address=":0",
                               silence_logs=logging.ERROR)
    try:
        with Client(cluster) as client:
            if gpus:
                client.register_plugin(_OneGpuPerWorker(gpus), name="clmer-one-gpu-per-worker")
            yield client
    finally:
        cluster.close()


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [g.strip() for g in env.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


class _OneGpuPerWorker(WorkerPlugin):
    """Worker plugin for a local cluster: worker i sees only GPU i (mod the GPU count).
    It runs before any task, so before torch initializes CUDA in that worker."""

    def __init__(self, gpus: list[str]) -> None:
        self.gpus = gpus

    def setup(self, worker: Any) -> None:
        try:
            i = int(worker.name)
        except (TypeError, ValueError):
            i = sum(map(ord, str(worker.name)))
        os.environ["CUDA_VISIBLE_DEVICES"] = self.gpus[i % len(self.gpus)]


def _check_workers(client: Any, gpu: bool, scheduler: str | None) -> dict[str, Any]:
    try:
        client.wait_for_workers(1, timeout=120)
    except Exception:  # noqa: BLE001 - a TimeoutError of some flavour
        raise ClmerError(f"no Dask worker joined the scheduler {scheduler or ''} within 120 s") from None
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if gpu and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
        raise ClmerError("--device cuda: no Dask worker offers the GPU resource; start one worker per GPU "
                         "with `dask worker ADDRESS --nworkers 1 --nthreads 1 --resources GPU=1`")
    return workers


def _workers_device(client: Any) -> str:
    """'cuda' when every worker sees a GPU, else 'cpu' (for --device auto)."""
    seen = client.run(cuda_available)
    return "cuda" if seen and all(seen.values()) else "cpu"


def extract_distributed(
    manifest: Any,
    features: list[str],
    cache_dir: str | Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    decode_workers: int | None = None,
    retries: int = 2,
    torch_threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    **engine_kwargs: Any,
) -> RunSummary:
    """``engine.extract`` with partitions on Dask: ``workers`` (local cluster), ``scheduler`` or ``client``.

    Raises :class:`ClmerError` (after finalizing what was done) when a
    partition still fails after ``retries``; a rerun computes only what is missing.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        resolve_device(device)  # raises the engine's message
    with contextlib.ExitStack() as stack:
        if client is None:
            gpu_wanted = device.startswith("cuda") or (device == "auto" and scheduler is None
                                                       and resolve_device("auto") == "cuda")
            client = stack.enter_context(dask_client(workers, scheduler, gpu=gpu_wanted, log=log))
        if device == "auto":
            device = _workers_device(client)
        gpu = device.startswith("cuda")
        nworkers = len(_check_workers(client, gpu, scheduler))
        log(f"Dask: {nworkers} worker(s) on {client.scheduler.address}, device {device}; "
            f"dashboard: {client.dashboard_link}")
        runner = DaskRunner(client, batch_size=batch_size, decode_workers=decode_workers, gpu=gpu,
                            retries=retries, torch_threads=torch_threads, log=log)
        summary = extract(manifest, features, cache_dir, device=device, batch_size=batch_size,
                          decode_workers=decode_workers, progress=progress, runner=runner, **engine_kwargs)
    if runner.failures:
        raise runner.error(summary)
    return summary

