"""Fault injection at every commit point of the store protocol, and the table of what held.

A CLI extract (siglip + bert on tiny random models; video clips, a truncated
video and a text-only clip, so that parts, failures and the ledger all get
written) is killed with ``os._exit`` (no cleanup, like ``kill -9``) right after
the N-th time it reaches a commit point (tests/_fault_runner.py): the manifest
snapshot, a part's data written, a part committed, an index, a failures table,
the ledger, a COMPLETE.json. Two scenarios: a fresh store, and an existing store
(4 clips extracted) being extended to the full manifest. After each kill a plain
rerun of extract must leave a store equal to a clean run's (every clip's values,
times and pooled vector, the failures, the ledger) and ``verify`` clean.

    .venv/bin/python benchmarks/store_faults.py [--out benchmarks/results/store_faults.md]

tests/test_store_faults.py runs the first occurrence of every point in both
scenarios through :func:`try_point`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "_fault_runner.py"
FEATURES = ("siglip", "bert")
PARTITION = 3
SCENARIOS = ("fresh", "extend")
KILLED = 86  # tests/_fault_runner.KILLED


@dataclass
class Case:
    """Media, models and manifests shared by every try."""

    root: Path
    models: Path
    small: Path  # the first 4 clips: the existing store of the "extend" scenario
    full: Path
    reference: Path  # cache of a clean run on the full manifest
    features: tuple[str, ...] = FEATURES


def make_case(root: Path, models: Path | None = None, features: tuple[str, ...] = FEATURES) -> Case:
    from clmer_features import testing as T

    root.mkdir(parents=True, exist_ok=True)
    if models is None:
        models = root / "models"
        T.make_tiny_siglip(models)
        T.make_tiny_bert(models)
    video = T.make_video(root / "av.mp4", 4.0)
    broken = T.make_truncated(video, root / "broken.mp4")
    rows = [{"clip_id": f"c{i}", "video": str(video), "start": 0.2 * i, "end": 0.2 * i + 2.5,
             "text": f"clip {i} is a happy one"} for i in range(6)]
    rows.insert(2, {"clip_id": "broken", "video": str(broken), "text": "a broken video"})
    rows.append({"clip_id": "words", "text": "only text in this one"})
    rows.append({"clip_id": "silent", "video": str(video)})  # no text: absent for bert
    small = T.write_manifest(root / "small" / "clips.csv", rows[:4])
    full = T.write_manifest(root / "full" / "clips.csv", rows)
    case = Case(root, models, small, full, root / "reference", tuple(features))
    extract_in_process(case, full, case.reference)
    return case


def extract_in_process(case: Case, manifest: Path, cache: Path) -> object:
    from clmer_features.engine import extract

    return extract(manifest, list(case.features), cache, models_dir=case.models, device="cpu", partition_size=PARTITION,
                   progress=False, dataset="clips")


def cli_args(case: Case, manifest: Path, cache: Path) -> list[str]:
    return ["extract", str(manifest), "-f", ",".join(case.features), "--cache", str(cache), "--models-dir",
            str(case.models), "--device", "cpu", "--partition-size", str(PARTITION), "--dataset", "clips",
            "--no-progress", "--decode-workers", "0"]


class Runner:
    """The fault runner's ``serve`` process: every killed run is a fork of one warm process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(RUNNER), "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def run(self, point: str, nth: int, args: list[str], log: Path) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"point": point, "nth": nth, "args": args, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the fault runner died (exit {self.proc.wait()})")
        return int(json.loads(answer)["status"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(60)


_RUNNERS: list[Runner] = []


def runner() -> Runner:
    if not _RUNNERS or _RUNNERS[0].proc.poll() is not None:
        _RUNNERS[:] = [Runner()]
    return _RUNNERS[0]


def killed_run(case: Case, point: str, nth: int, manifest: Path, cache: Path) -> tuple[int, str]:
    """Run the CLI under the fault runner; (exit status, output)."""
    log = cache.parent / f"run-{point}-{nth}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    rc = runner().run(point, nth, cli_args(case, manifest, cache), log)
    return rc, log.read_text(errors="replace")


def point_counts(case: Case, scenario: str, workdir: Path) -> dict[str, int]:
    """How often a run of ``scenario`` reaches each commit point (a run with no kill)."""
    cache = prepare(case, scenario, workdir)
    rc, out = killed_run(case, "count", 0, case.full, cache)
    assert rc == 0, out[-3000:]
    line = next(l for l in out.splitlines() if l.startswith("reached "))
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}


def prepare(case: Case, scenario: str, workdir: Path) -> Path:
    cache = workdir / "cache"
    if scenario == "extend":
        extract_in_process(case, case.small, cache)
    return cache


def store_difference(a: Path, b: Path, features: tuple[str, ...] = FEATURES) -> str | None:
    """None when the stores hold the same data (values, times, pooled, failures, ledger), else what differs."""
    import numpy as np

    from clmer_features.store import open_store

    sa, sb = open_store(a, "clips"), open_store(b, "clips")
    for f in features:
        fa, fb = sa.feature(f), sb.feature(f)
        if fa.spec.spec_id != fb.spec.spec_id:
            return f"{f}: spec {fa.spec.spec_id} != {fb.spec.spec_id}"
        if fa.clip_ids != fb.clip_ids:
            return f"{f}: clips {fa.clip_ids} != {fb.clip_ids}"
        for cid in fa.clip_ids:
            va, vb = fa.get(cid), fb.get(cid)
            if va.dtype != vb.dtype or not np.array_equal(va, vb):
                return f"{f}/{cid}: values differ"
            ta, tb = fa.times(cid), fb.times(cid)
            if (ta is None) != (tb is None) or (ta is not None and not np.array_equal(ta, tb)):
                return f"{f}/{cid}: times differ"
        if fa.clip_ids and not np.array_equal(fa.pooled(how="mean"), fb.pooled(how="mean")):
            return f"{f}: pooled differ"
        cols = ["clip_id", "stage", "error", "kind", "attempt"]
        if not fa.failures().select(cols).sort("clip_id").equals(fb.failures().select(cols).sort("clip_id")):
            return f"{f}: failures differ"
    cols = ["clip_id", "feature", "spec_id", "stage", "error", "kind", "attempt"]
    la, lb = (s.ledger().select(cols).sort("feature", "clip_id") for s in (sa, sb))
    if not la.equals(lb):
        return f"ledger differs: {la.height} vs {lb.height} rows"
    return None


def try_point(case: Case, scenario: str, point: str, nth: int, workdir: Path) -> tuple[bool, str]:
    """Kill at the nth ``point``, rerun plainly, compare with the clean run; (held, detail)."""
    from clmer_features.store import open_store
    from clmer_features.store.maintenance import verify

    cache = prepare(case, scenario, workdir)
    rc, out = killed_run(case, point, nth, case.full, cache)
    if rc != KILLED:
        return False, f"the run was not killed there (exit {rc}): {out[-500:]}"
    extract_in_process(case, case.full, cache)  # the plain rerun
    rep = verify(open_store(cache, "clips"))
    if not rep.ok:
        return False, f"verify {rep.state}: {rep.problems[:2]}"
    diff = store_difference(case.reference, cache, case.features)
    return (diff is None), (diff or "equal to a clean run, verify clean")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "store_faults.md")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from _fault_runner import POINTS

    t0 = time.perf_counter()
    rows: list[tuple[str, str, int, int, int, str]] = []
    with tempfile.TemporaryDirectory(prefix="clmer-faults-") as tmp:
        case = make_case(Path(tmp) / "case")
        for scenario in SCENARIOS:
            counts = point_counts(case, scenario, Path(tmp) / f"count-{scenario}")
            for point in POINTS:
                n = counts.get(point, 0)
                held, notes = 0, []
                for nth in range(1, n + 1):
                    ok, detail = try_point(case, scenario, point, nth, Path(tmp) / f"{scenario}-{point}-{nth}")
                    held += ok
                    if not ok:
                        notes.append(f"#{nth}: {detail}")
                rows.append((scenario, point, n, n, held, "; ".join(notes) or "all held"))
                print(f"{scenario:<7}{point:<11}{n:>3} tried {held:>3} held  {rows[-1][-1][:100]}", flush=True)
    wall = time.perf_counter() - t0
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    tried = sum(r[3] for r in rows)
    held = sum(r[4] for r in rows)
    lines = [
        "# Store protocol under fault injection",
        "",
        f"`benchmarks/store_faults.py`: a CLI extract ({', '.join(FEATURES)}, tiny models, 9 clips: 6 video, "
        "1 truncated video, 1 text-only, 1 video without text; partitions of 3) killed with `os._exit` right after the N-th time it "
        "reaches each commit point, for every N the run reaches; then a plain rerun. *Held* = the rerun's store "
        "equals a clean run's (values, times, pooled vectors, failures, ledger) and `verify` is clean.",
        "",
        "| scenario | commit point | times reached | killed there | held | notes |",
        "|---|---|---:|---:|---:|---|",
        *[f"| {s} | {p} | {n} | {t} | {h} | {note} |" for s, p, n, t, h, note in rows],
        f"| **all** | | | **{tried}** | **{held}** | |",
        "",
        f"{tried} kills, {held} held; {wall:.0f} s wall. `uptime`: {uptime}",
        "",
        "Scenarios: *fresh* = an empty cache; *extend* = a store holding the first 4 clips of the manifest, "
        "extended to all 9 by the killed run. Points: clips = manifest snapshot written; part-data = a part's "
        "files and PART.json written in its temporary folder; part = the part renamed into place; index / "
        "failures = a spec's index.parquet / failures.parquet rewritten by finalize; ledger = ledger.parquet "
        "rewritten; complete = COMPLETE.json written.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if held != tried:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
