"""A real S3 API server on localhost, for the tests and benchmarks (moto's server mode:
``pip install "moto[server]"``, in the ``test`` extra)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from typing import Iterator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """Start ``moto.server`` on a free port; yield the AWS_* variables that point clmer at it."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("moto.server exited at start") from None
                time.sleep(0.05)
        else:
            raise RuntimeError("moto.server did not start in 15 s")
        yield {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_REGION": "us-east-1"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def new_bucket(env: dict[str, str]) -> str:
    """A fresh bucket on the server (one per test keeps tests apart)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    req = urllib.request.Request(f"{env['AWS_ENDPOINT_URL']}/{name}", method="PUT")
    urllib.request.urlopen(req, timeout=10).close()
    return name


def count_requests() -> int:
    """Requests this process made to object stores so far (every bucket)."""
    from clmer_features.store.objpath import Bucket

    return sum(b.requests for b in Bucket._cache.values())
