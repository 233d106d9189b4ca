"""Partition leases: extracts that share a cache split the work instead of doing it twice.

A lease is a small file ``<store>/leases/<name>.json`` naming its owner (a token,
the host and the process id). Its modification time is the heartbeat: a thread
of the owner touches every lease it holds each ``ttl/6`` seconds. A lease is
expired, and another process may take it over, when its heartbeat is older than
the TTL (``CLMER_LEASE_TTL`` seconds, 60 by default), or at once when its owner
is a process of this host that no longer exists (a ``kill -9``). Lease decisions
are made under an ``flock`` of ``leases/.lock``, so two processes never both
take the same free or expired lease.

On an object store (no flock, no O_EXCL) a lease is an object written with
conditional puts (:class:`ObjectLeases`): ``If-None-Match: *`` to take a free one,
``If-Match: <etag>`` to take over an expired one or to beat the heartbeat (its
``last_modified`` is the heartbeat, on the service's clock), so two processes never
both take it. A service that ignores conditional headers degrades to leases that two
processes may both think they hold: time lost, still never correctness.

Leases only save work; they never decide what is in the store. A partition is
done when its parts are committed (parts stay the unit of truth): a process
checks that before and after it claims one, a twin part of a partition run
twice is discarded at commit, and finalize indexes whatever parts exist. So a
lease that is lost, stolen from a slow owner or left by a crash costs time,
never correctness.
"""
from __future__ import annotations

import collections
import fcntl
import json
import os
import platform
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

LEASES_DIR = "leases"
DEFAULT_TTL_S = 60.0

T = TypeVar("T")


def default_ttl() -> float:
    try:
        return float(os.environ.get("CLMER_LEASE_TTL", DEFAULT_TTL_S))
    except ValueError:
        return DEFAULT_TTL_S


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Leases:
    """The leases one process holds on one store (use as a context manager)."""

    def __init__(self, store_root: Path, ttl_s: float | None = None, poll_s: float | None = None) -> None:
        self.dir = Path(store_root) / LEASES_DIR
        self.ttl_s = default_ttl() if ttl_s is None else ttl_s
        self.poll_s = min(0.25, self.ttl_s / 6) if poll_s is None else poll_s  # a stat and a small read
        self.me = {"token": uuid.uuid4().hex, "host": platform.node(), "pid": os.getpid()}
        self.held: set[str] = set()
        self.taken_over: list[str] = []  # expired leases of other owners that this process took
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> "Leases":
        self.dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._beat, name="clmer-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for name in list(self.held):
            self.release(name)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 6):
            for name in list(self.held):
                if self._holder(self._path(name)).get("token") == self.me["token"]:
                    try:
                        os.utime(self._path(name))
                    except FileNotFoundError:
                        self.held.discard(name)
                else:  # taken over by someone who thought us dead: our part, if any, is a twin
                    self.held.discard(name)

    # ------------------------------------------------------------------ one lease
    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / ".lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _holder(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def expired(self, path: Path, holder: dict | None = None) -> bool:
        """Whether the lease at ``path`` may be taken over: stale heartbeat, or a dead owner here."""
        holder = self._holder(path) if holder is None else holder
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        if age > self.ttl_s:
            return True
        pid = holder.get("pid")
        return holder.get("host") == self.me["host"] and isinstance(pid, int) and not _pid_alive(pid)

    def acquire(self, name: str) -> bool:
        """Take the lease ``name`` if it is free, ours or expired; False when someone else holds it."""
        path = self._path(name)
        with self._locked():
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder(path)
                if holder.get("token") != self.me["token"]:
                    if not self.expired(path, holder):
                        return False
                    tmp = path.with_name(f".{name}.{self.me['token'][:8]}")
                    tmp.write_text(json.dumps(self.me))
                    os.replace(tmp, path)  # the mtime is now ours too
                    self.taken_over.append(name)
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(self.me))
        self.held.add(name)
        return True

    def release(self, name: str) -> None:
        self.held.discard(name)
        path = self._path(name)
        with self._locked():
            if self._holder(path).get("token") == self.me["token"]:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ many
    def claim(self, items: Iterable[T], *, name: Callable[[T], str], done: Callable[[T], bool],
              skip: Callable[[T], None], window: int = 1) -> Iterator[list[T]]:
        """Yield batches (at most ``window``) of ``items`` whose lease this process now holds.

        An item already ``done`` (its parts are on disk) is passed to ``skip`` instead, also
        when it became done while another process held it. Items others hold are waited for
        once no free item is left: each ends done (``skip``) or, when its owner died, taken
        over. The leases of a batch are released when the consumer asks for the next batch.
        """
        fresh = collections.deque(items)
        others: list[T] = []
        while fresh or others:
            batch: list[T] = []
            while fresh and len(batch) < window:
                it = fresh.popleft()
                state = self._take(it, name, done, skip)
                if state == "mine":
                    batch.append(it)
                elif state == "held":
                    others.append(it)
            if not batch and others:
                waiting: list[T] = []
                for it in others:
                    state = "held" if len(batch) >= window else self._take(it, name, done, skip)
                    if state == "mine":
                        batch.append(it)
                    elif state == "held":
                        waiting.append(it)
                others = waiting
                if not batch and others:
                    time.sleep(self.poll_s)
                    continue
            if batch:
                try:
                    yield batch
                finally:
                    for it in batch:
                        self.release(name(it))

    def _take(self, it: T, name: Callable[[T], str], done: Callable[[T], bool], skip: Callable[[T], None]) -> str:
        if done(it):
            skip(it)
            return "done"
        if not self.acquire(name(it)):
            return "held"
        if done(it):  # committed between our look and our lease
            self.release(name(it))
            skip(it)
            return "done"
        return "mine"


class ObjectLeases(Leases):
    """Leases as objects ``leases/<name>.json`` on an object store, taken with conditional puts."""

    def __init__(self, store_root, ttl_s: float | None = None, poll_s: float | None = None) -> None:
        super().__init__(Path("."), ttl_s, poll_s)
        self.dir = store_root / LEASES_DIR  # an ObjPath
        self.poll_s = max(self.poll_s, 0.25)  # each look is a request

    def __enter__(self) -> "ObjectLeases":
        self._thread = threading.Thread(target=self._beat, name="clmer-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        from clmer_features.store.objpath import PreconditionFailed

        while not self._stop.wait(self.ttl_s / 6):
            for name in list(self.held):
                data, tag = self._path(name).read_with_etag()
                if data is None or json.loads(data).get("token") != self.me["token"]:
                    self.held.discard(name)  # taken over by someone who thought us dead
                    continue
                try:
                    self._path(name).write_bytes(json.dumps(self.me).encode(), if_match=tag)
                except PreconditionFailed:
                    self.held.discard(name)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        yield  # conditional puts decide, not a lock

    @staticmethod
    def _holder(path) -> dict:
        try:
            return json.loads(path.read_bytes())
        except (OSError, ValueError):
            return {}

    def acquire(self, name: str) -> bool:
        from clmer_features.store.objpath import PreconditionFailed

        path = self._path(name)
        mine = json.dumps(self.me).encode()
        try:
            path.write_bytes(mine, create=True)
        except PreconditionFailed:
            data, tag = path.read_with_etag()
            holder = json.loads(data) if data else {}
            if holder.get("token") != self.me["token"]:
                if data is not None and not self.expired(path, holder):
                    return False
                try:  # over the expired lease we read (or none), never over a fresher one
                    path.write_bytes(mine, create=data is None, if_match=tag)
                except PreconditionFailed:
                    return False
                self.taken_over.append(name)
        self.held.add(name)
        return True

    def release(self, name: str) -> None:
        self.held.discard(name)
        path = self._path(name)
        if self._holder(path).get("token") == self.me["token"]:
            path.unlink(missing_ok=True)


def open_leases(store_root, ttl_s: float | None = None) -> Leases:
    """The leases of a store: files under an flock on a local disk, conditional puts on an object store."""
    from clmer_features.store.objpath import is_object

    return ObjectLeases(store_root, ttl_s) if is_object(store_root) else Leases(store_root, ttl_s)


# --------------------------------------------------------------------------- the engine's partitions
def partition_lease(partition: tuple[list, list]) -> str:
    """A partition's lease name: the same parts to write give the same name in every process."""
    import hashlib

    _, tasks = partition
    parts = sorted(f"{t.writer.spec.spec_id}/{t.part_name}" for t in tasks)
    return "partition-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def partition_committed(partition: tuple[list, list]) -> bool:
    """Whether every part of a partition is committed (done, by whichever process)."""
    _, tasks = partition
    return all(t.writer.find_part(t.part_name) is not None for t in tasks)
