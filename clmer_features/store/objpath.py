"""Stores on object storage (S3 and S3-compatible services): a key prefix that behaves
like the few ``pathlib.Path`` operations the store uses, plus conditional writes.

``--cache s3://bucket/prefix`` opens the store at ``s3://bucket/prefix/<dataset>``.
Credentials and endpoint come only from the standard variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``,
and the rest of the ``AWS_*`` family that obstore reads); never from the spec or the store.
A cache URL of any other scheme is refused in one line (:func:`cache_root`).

Why obstore (not fsspec/s3fs): one Rust wheel without Python dependencies (s3fs pins
aiobotocore, which pins botocore), conditional puts (``If-None-Match: *`` and
``If-Match: <etag>``) that the commit protocol needs, and concurrent, coalesced range
reads of one object (``get_ranges``) for batched reads. zarr 3.1 reads through it too
(``zarr.storage.ObjectStore``).

There is no rename on an object store: a part is written under its final prefix and
becomes visible when its marker object (``PART.json``) is written last; see writer.py.
Every request goes through :class:`Bucket`, which counts them (benchmarks report
requests per scan).
"""
from __future__ import annotations

import fnmatch
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from clmer_features.errors import StoreError

SCHEMES = ("s3",)


class PreconditionFailed(Exception):
    """A conditional write lost: the object exists (create) or changed (update)."""


@dataclass
class _Stat:
    st_size: int
    st_mtime: float


class Bucket:
    """One bucket's connection (an obstore ``S3Store``), shared by every path in it, and
    a count of the requests made through it."""

    _cache: dict[str, "Bucket"] = {}
    _lock = threading.Lock()

    def __init__(self, name: str):
        self.name = name
        self.requests = 0
        self._count_lock = threading.Lock()
        self._store: Any = None
        self._pid = 0

    @classmethod
    def get(cls, name: str) -> "Bucket":
        with cls._lock:
            b = cls._cache.get(name)
            if b is None:
                b = cls._cache[name] = Bucket(name)
            return b

    @property
    def store(self) -> Any:
        """The obstore S3Store (made in each process: a forked child makes its own)."""
        if self._store is None or self._pid != os.getpid():
            self._store = self.connect()
            self._pid = os.getpid()
        return self._store

    def connect(self, prefix: str | None = None) -> Any:
        """A new S3Store of this bucket (under ``prefix``), configured from the AWS_* variables."""
        from obstore.store import S3Store

        client: dict[str, Any] = {"timeout": "120s"}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        if endpoint.startswith("http://"):
            client["allow_http"] = True  # a service on the local network (MinIO, moto, ...)
        return S3Store(self.name, prefix=prefix or None, client_options=client)

    def count(self, n: int = 1) -> None:
        with self._count_lock:
            self.requests += n

    def __reduce__(self):  # a worker process reconnects with its own credentials
        return (Bucket.get, (self.name,))


def _missing(exc: BaseException) -> bool:
    return type(exc).__name__ == "NotFoundError" or isinstance(exc, FileNotFoundError)


class ObjPath:
    """``s3://bucket/key``: a key (a file) or a key prefix (a folder) in a bucket."""

    __slots__ = ("bucket", "key")

    def __init__(self, bucket: Bucket, key: str):
        self.bucket = bucket
        self.key = key.strip("/")

    # ------------------------------------------------------------------ names
    def __truediv__(self, other: str) -> "ObjPath":
        other = str(other).strip("/")
        return ObjPath(self.bucket, f"{self.key}/{other}" if self.key else other)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "ObjPath":
        return ObjPath(self.bucket, self.key.rsplit("/", 1)[0] if "/" in self.key else "")

    def with_name(self, name: str) -> "ObjPath":
        return self.parent / name

    def relative_to(self, other: "ObjPath") -> Path:
        if not self.key.startswith(other.key + "/"):
            raise ValueError(f"{self} is not under {other}")
        return Path(self.key[len(other.key) + 1:])

    def as_posix(self) -> str:
        return str(self)

    def resolve(self) -> "ObjPath":
        return self

    def __str__(self) -> str:
        return f"s3://{self.bucket.name}/{self.key}"

    def __repr__(self) -> str:
        return f"ObjPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjPath) and (self.bucket.name, self.key) == (other.bucket.name, other.key)

    def __hash__(self) -> int:
        return hash((self.bucket.name, self.key))

    def __lt__(self, other: "ObjPath") -> bool:
        return self.key < other.key

    def __reduce__(self):
        return (ObjPath, (self.bucket, self.key))

    # ------------------------------------------------------------------ reads
    def head(self) -> dict[str, Any] | None:
        import obstore

        self.bucket.count()
        try:
            return obstore.head(self.bucket.store, self.key)
        except Exception as exc:  # noqa: BLE001 - obstore's NotFoundError
            if _missing(exc):
                return None
            raise

    def read_bytes(self) -> bytes:
        import obstore

        self.bucket.count()
        try:
            return bytes(obstore.get(self.bucket.store, self.key).bytes())
        except Exception as exc:  # noqa: BLE001
            if _missing(exc):
                raise FileNotFoundError(str(self)) from None
            raise

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def read_with_etag(self) -> tuple[bytes | None, str | None]:
        """The object's bytes and ETag (None, None when there is none): for a conditional update."""
        import obstore

        self.bucket.count()
        try:
            res = obstore.get(self.bucket.store, self.key)
        except Exception as exc:  # noqa: BLE001
            if _missing(exc):
                return None, None
            raise
        return bytes(res.bytes()), res.meta.get("e_tag")

    def read_ranges(self, starts: list[int], ends: list[int]) -> list[memoryview]:
        """Byte ranges of one object, one request each, fetched concurrently (the caller
        coalesces: see objread.coalesce)."""
        import obstore

        self.bucket.count(len(starts))
        got = obstore.get_ranges(self.bucket.store, self.key, starts=starts, ends=ends, coalesce=0)
        return [memoryview(b) for b in got]

    def exists(self) -> bool:
        return self.head() is not None or self.is_dir()

    def is_file(self) -> bool:
        return self.head() is not None

    def is_dir(self) -> bool:
        import obstore

        self.bucket.count()
        for batch in obstore.list(self.bucket.store, self.key + "/", chunk_size=1):
            return bool(batch)
        return False

    def stat(self) -> _Stat:
        h = self.head()
        if h is None:
            raise FileNotFoundError(str(self))
        return _Stat(int(h["size"]), h["last_modified"].timestamp())

    def iterdir(self) -> Iterator["ObjPath"]:
        """Direct children: objects and prefixes ('folders') one level down."""
        import obstore

        self.bucket.count()
        res = obstore.list_with_delimiter(self.bucket.store, self.key + "/" if self.key else None)
        names = {p.rstrip("/") for p in res["common_prefixes"]} | {o["path"] for o in res["objects"]}
        return iter(sorted(ObjPath(self.bucket, n) for n in names))

    def walk(self) -> list[dict[str, Any]]:
        """Every object under this prefix (path, size, last_modified, e_tag), listed in pages."""
        import obstore

        out: list[dict[str, Any]] = []
        for batch in obstore.list(self.bucket.store, self.key + "/", chunk_size=1000):
            self.bucket.count()
            out.extend(batch)
        return out

    def rglob(self, pattern: str) -> Iterator["ObjPath"]:
        for o in self.walk():
            if fnmatch.fnmatch(o["path"].rsplit("/", 1)[-1], pattern):
                yield ObjPath(self.bucket, o["path"])

    def glob(self, pattern: str) -> Iterator["ObjPath"]:
        return (p for p in self.iterdir() if fnmatch.fnmatch(p.name, pattern))

    # ------------------------------------------------------------------ writes
    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: a prefix exists once an object is written under it."""

    def write_bytes(self, data: bytes, *, create: bool = False, if_match: str | None = None) -> str | None:
        """Put the object (one PUT: readers see the old bytes or the new, never a mix);
        ``create`` only if it does not exist, ``if_match`` only if its ETag is still that one
        (:class:`PreconditionFailed` otherwise). Returns the new ETag."""
        import obstore

        mode: Any = "create" if create else {"e_tag": if_match} if if_match else "overwrite"
        self.bucket.count()
        try:
            return obstore.put(self.bucket.store, self.key, data, mode=mode).get("e_tag")
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ in ("AlreadyExistsError", "PreconditionError"):
                raise PreconditionFailed(str(self)) from None
            raise

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def unlink(self, missing_ok: bool = False) -> None:
        import obstore

        self.bucket.count()
        try:
            obstore.delete(self.bucket.store, self.key)  # S3 deletes of absent keys succeed
        except Exception as exc:  # noqa: BLE001
            if not (missing_ok and _missing(exc)):
                raise

    def delete_tree(self) -> int:
        """Delete every object under this prefix (batched); returns how many."""
        import obstore

        paths = [o["path"] for o in self.walk()]
        for i in range(0, len(paths), 1000):
            self.bucket.count()
            obstore.delete(self.bucket.store, paths[i:i + 1000])
        return len(paths)

    def upload_tree(self, folder: Path, last: str | None = None) -> None:
        """Put every file of a local ``folder`` under this prefix, concurrently; the file
        named ``last`` (relative path) is not put here: the caller writes it last."""
        from concurrent.futures import ThreadPoolExecutor

        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() != last]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda p: (self / p.relative_to(folder).as_posix()).write_bytes(p.read_bytes()), files))

    def zarr_store(self) -> Any:
        """This prefix as a read-only zarr store (zarr.storage.ObjectStore over obstore)."""
        from zarr.storage import ObjectStore

        return ObjectStore(self.bucket.connect(self.key), read_only=True)


StorePath = Path | ObjPath


def cache_root(cache_dir: str | os.PathLike[str]) -> StorePath:
    """``--cache`` as a local folder or an object-store prefix; any other URL is refused in one line
    (``Path("s3://b/x")`` would be a local folder named ``s3:``)."""
    text = os.fspath(cache_dir)
    if "://" not in text:
        return Path(text)
    scheme, rest = text.split("://", 1)
    if scheme.lower() not in SCHEMES:
        raise StoreError(
            f"--cache {text}: clmer cannot serve {scheme}:// caches; use a local folder or s3://bucket/prefix "
            "(any S3-compatible service: set AWS_ENDPOINT_URL)"
        )
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StoreError(f"--cache {text}: no bucket (write s3://bucket/prefix)")
    return ObjPath(Bucket.get(bucket), key)


def is_object(path: Any) -> bool:
    return isinstance(path, ObjPath)


def age_s(path: StorePath) -> float:
    """Seconds since ``path`` was last written (the service's clock for objects)."""
    return time.time() - path.stat().st_mtime
