"""Project-wide test settings: nothing reaches a model hub, caches go to tmp."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """A test never writes into the repository's cache/ folder by accident."""
    monkeypatch.setenv("CLMER_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    small heads run fastest so, and do not fight other tests for the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_finish(session):
    """Scripts folders must not be importable by name: benchmarks/distributed.py on sys.path
    shadows the `distributed` package (Dask workers then fail to start)."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bad = [p for p in sys.path if p and Path(p).resolve() in (root / "benchmarks", root / "manifests")]
    assert not bad, f"a test module put {bad} on sys.path; load scripts with importlib by path instead"


@pytest.fixture(scope="session")
def s3_env():
    """A local S3 API server (moto) for the session: the AWS_* variables that reach it."""
    from clmer_features.testing_s3 import s3_server

    with s3_server() as env:
        yield env


@pytest.fixture
def s3_cache(s3_env, monkeypatch):
    """``s3://<fresh bucket>/cache`` on the session's S3 server, with the AWS_* variables set
    (child processes inherit them)."""
    from clmer_features.testing_s3 import new_bucket

    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    return f"s3://{new_bucket(s3_env)}/cache"
