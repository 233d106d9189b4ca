"""Kill an extract (os._exit, like kill -9) right after each commit point of the store protocol, on a
fresh store and on one being extended; a plain rerun must give a clean run's store and a clean
verify. The full table (every occurrence of every point) is benchmarks/store_faults.py."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from _extract_helpers import tiny_models  # noqa: F401  (fixture)
from _fault_runner import POINTS

pytestmark = pytest.mark.slow


def load_script():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "store_faults.py"
    spec = importlib.util.spec_from_file_location("clmer_bench_store_faults", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def faults(tiny_models, tmp_path_factory):
    bench = load_script()
    # bert alone (no decoding) keeps the 14 kills quick; the benchmark adds siglip
    case = bench.make_case(tmp_path_factory.mktemp("faults-case"), models=tiny_models, features=("bert",))
    yield bench, case
    for r in bench._RUNNERS:
        r.close()


@pytest.mark.parametrize("scenario", ["fresh", "extend"])
@pytest.mark.parametrize("point", POINTS)
def test_a_rerun_after_a_kill_at_each_commit_point_equals_a_clean_run(faults, scenario, point, tmp_path):
    bench, case = faults
    held, detail = bench.try_point(case, scenario, point, 1, tmp_path)
    assert held, detail


def test_the_comparison_sees_a_difference(faults, tmp_path):
    """The check above can fail: a store missing one clip is not equal to the clean run."""
    bench, case = faults
    small = tmp_path / "small"
    bench.extract_in_process(case, case.small, small)
    assert bench.store_difference(case.reference, small, case.features) is not None
