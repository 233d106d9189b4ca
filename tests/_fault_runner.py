"""Fault injection for the tests (a test hook: production code has none).

As a script: ``python tests/_fault_runner.py POINT N -- clmer-features ARGS...`` runs the CLI
(``python tests/_fault_runner.py serve`` runs many such runs, forked from one warm process)
with the store's commit functions wrapped so that the process dies (``os._exit``, no cleanup,
like ``kill -9``) right after the N-th time the run reaches commit point POINT:

  clips        the manifest snapshot (clips.parquet) is written
  part-data    a part's files and PART.json are written, not yet renamed into place
  part         a part is renamed into place (committed)
  index        a spec's index.parquet is rewritten by finalize
  failures     a spec's failures.parquet is rewritten by finalize
  ledger       the store's ledger.parquet is rewritten by finalize
  complete     a spec's COMPLETE.json is written (the end of finalize)
  part-upload  (object stores) a part's files are uploaded under its final prefix, its marker not yet
  dask-result  the client has merged the N-th partition result of a Dask run

With POINT ``hold`` and a file path for N, the first partition this process runs waits
(holding its lease) until that file exists; it prints ``holding`` first. With POINT
``count`` it dies nowhere and prints how often each point was reached
(``reached clips=1 part=4 ...`` on stderr).

As a module: :class:`WorkerFaults`, a Dask WorkerPlugin that wraps the worker's
``run_partition_task`` so that files in a folder kill or fail chosen partitions.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

KILLED = 86  # the exit status of a process this hook killed
POINTS = ("clips", "part-data", "part", "index", "failures", "ledger", "complete")
OBJECT_POINTS = ("clips", "part-data", "part-upload", "part", "index", "ledger", "complete")


def install(point: str, nth: int) -> dict[str, int]:
    """Wrap the commit functions; die right after the ``nth`` time ``point`` is reached."""
    from clmer_features.store import layout as L
    from clmer_features.store import writer as W

    counts: dict[str, int] = {}

    def reached(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1
        if name == point and counts[name] == nth:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(KILLED)

    by_name = {L.CLIPS_FILE: "clips", L.INDEX_FILE: "index", L.FAILURES_FILE: "failures", L.LEDGER_FILE: "ledger"}
    write_parquet, write_json, commit = L.atomic_write_parquet, L.atomic_write_json, W.PartWriter.commit

    def atomic_write_parquet(path: Path, df: Any) -> None:
        write_parquet(path, df)
        if path.name in by_name and not (path.name == L.INDEX_FILE and path.parent.parent.name == L.PARTS_DIR):
            reached(by_name[path.name])

    def atomic_write_json(path: Path, obj: Any) -> None:
        write_json(path, obj)
        if path.name == L.COMPLETE_FILE:
            reached("complete")
        elif path.name == L.PART_FILE:
            reached("part-data")

    def part_commit(self: Any) -> Path:
        out = commit(self)
        reached("part")
        return out

    L.atomic_write_parquet = atomic_write_parquet
    L.atomic_write_json = atomic_write_json
    W.PartWriter.commit = part_commit

    # object stores: the completion record and the ledger are conditional puts, parts are uploaded
    from clmer_features.store.objpath import ObjPath

    put, upload = ObjPath.write_bytes, ObjPath.upload_tree
    by_object = {L.COMPLETE_FILE: "complete", L.LEDGER_FILE: "ledger"}

    def write_bytes(self: Any, data: bytes, **kw: Any) -> Any:
        out = put(self, data, **kw)
        if kw and self.name in by_object:  # the conditional puts of finalize
            reached(by_object[self.name])
        return out

    def upload_tree(self: Any, folder: Path, last: Any = None) -> None:
        upload(self, folder, last)
        reached("part-upload")

    ObjPath.write_bytes = write_bytes
    ObjPath.upload_tree = upload_tree
    try:
        from clmer_features import distributed as D
    except ImportError:
        return counts
    merge = D.DaskRunner._merge

    def dask_merge(self: Any, res: Any, summary: Any) -> None:
        merge(self, res, summary)
        reached("dask-result")

    D.DaskRunner._merge = dask_merge
    return counts


def hold_first_partition(release: str) -> None:
    from clmer_features import engine

    run = engine.run_partition
    calls = [0]

    def run_partition(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            print("holding", flush=True)
            while not os.path.exists(release):
                time.sleep(0.05)
        return run(*args, **kwargs)

    engine.run_partition = run_partition


def serve() -> None:
    """``_fault_runner.py serve``: import the CLI and the models' libraries once, then for each
    JSON line on stdin ({"point", "nth", "args", "log"}) fork a child that runs like ``main``
    (output to "log") and answer {"status": exit status} on stdout. Kills then cost a fork, not
    a Python start with torch and transformers (seconds each). Nothing here runs torch before
    forking, so the children start with fresh thread pools."""
    import json

    import clmer_features.cli  # noqa: F401
    import clmer_features.engine  # noqa: F401
    import clmer_features.extractors  # noqa: F401

    try:
        import transformers

        for name in ("BertModel", "BertTokenizerFast", "AutoTokenizer", "SiglipVisionModel", "SiglipImageProcessor"):
            getattr(transformers, name, None)  # resolve the lazy modules now, once
    except ImportError:
        pass
    out = sys.stdout
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            status = 0
            try:
                main([job["point"], str(job["nth"]), "--", *job["args"]])
            except BaseException as exc:  # noqa: BLE001 - the child reports, never returns to the loop
                print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
                status = getattr(exc, "code", 1) if isinstance(exc, SystemExit) else 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status if isinstance(status, int) else 1)
        _, wstatus = os.waitpid(pid, 0)
        out.write(json.dumps({"status": os.waitstatus_to_exitcode(wstatus)}) + "\n")
        out.flush()


def main(argv: list[str]) -> None:
    if argv == ["serve"]:
        return serve()
    point, nth, sep, *args = argv
    assert sep == "--", "usage: _fault_runner.py POINT N -- ARGS..."
    if point == "hold":
        hold_first_partition(nth)
        counts: dict[str, int] = {}
    else:
        counts = install(point, int(nth))
    from clmer_features.cli import cli

    try:
        cli.main(args=args, prog_name="clmer-features", standalone_mode=False)
    finally:
        print("reached " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- Dask workers
try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - dask is an extra
    WorkerPlugin = object  # type: ignore[assignment,misc]


class WorkerFaults(WorkerPlugin):  # type: ignore[misc,valid-type]
    """In each worker, ``run_partition_task`` reads ``folder`` first: ``kill-before-<i>`` /
    ``kill-after-<i>`` kill the worker once (the file is removed first, so only the first attempt
    dies) before partition i runs or after it committed; ``raise-<i>`` makes every attempt
    raise; ``delay`` holds seconds to sleep per task. Register it with
    ``client.register_plugin(WorkerFaults(folder))`` after ``cloudpickle.register_pickle_by_value``
    on this module (workers cannot import the tests folder)."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = str(folder)

    def setup(self, worker: Any) -> None:
        from clmer_features import distributed as D

        run = getattr(D.run_partition_task, "__wrapped_by_faults__", D.run_partition_task)
        folder = self.folder

        def fault(index: int, when: str) -> None:
            if when == "before":
                try:
                    time.sleep(float(Path(folder, "delay").read_text()))
                except (FileNotFoundError, ValueError):
                    pass
                if Path(folder, f"raise-{index}").exists():
                    raise RuntimeError(f"injected failure in partition {index}")
            try:
                os.unlink(Path(folder, f"kill-{when}-{index}"))
            except FileNotFoundError:
                return
            os._exit(KILLED)

        def run_partition_task(index: int, *args: Any, **kwargs: Any) -> Any:
            fault(index, "before")
            res = run(index, *args, **kwargs)
            fault(index, "after")
            return res

        run_partition_task.__wrapped_by_faults__ = run  # type: ignore[attr-defined]
        D.run_partition_task = run_partition_task

    def teardown(self, worker: Any) -> None:
        from clmer_features import distributed as D

        D.run_partition_task = getattr(D.run_partition_task, "__wrapped_by_faults__", D.run_partition_task)


if __name__ == "__main__":
    main(sys.argv[1:])
