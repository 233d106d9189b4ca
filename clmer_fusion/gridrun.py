"""Grid jobs, in this process or in a pool of worker processes (``workers`` in a bench config).

Each job (protocol, head, modality subset, seed) is independent and seeded, so a job gives the
same numbers in any process: the pool only changes wall time. Workers are spawned (not forked),
get the data once through the initializer and run torch on ``threads`` threads each.
"""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterator

from clmer_fusion.data import FusionData
from clmer_fusion.fit import TrainConfig
from clmer_fusion.train import run

Job = tuple[dict[str, Any], str, list[str], int, dict[str, Any]]   # protocol, head, subset, seed, options

_DATA: FusionData | None = None


def run_job(data: FusionData, job: Job) -> dict[str, Any]:
    """One grid cell: rows, per-clip outputs of the evaluation sets, confusion matrices."""
    p, head, subset, seed, opts = job
    res = run(data.select(subset), TrainConfig.from_dict({**opts, "head": head, "seed": seed}), p)
    return {"rows": res.rows, "outputs": res.outputs, "confusions": res.confusions}


def _init(data: FusionData, threads: int) -> None:
    global _DATA
    import torch

    torch.set_num_threads(threads)
    _DATA = data


def _work(job: Job) -> dict[str, Any]:
    assert _DATA is not None
    return run_job(_DATA, job)


def run_jobs(data: FusionData, jobs: list[Job], workers: int = 1, threads: int = 1) -> Iterator[dict[str, Any]]:
    """Results in job order (so tables and records do not depend on scheduling)."""
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            yield run_job(data, job)
        return
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init,
                             initargs=(data, threads)) as pool:
        yield from pool.map(_work, jobs, chunksize=1)
