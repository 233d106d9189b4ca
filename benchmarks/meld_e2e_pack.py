"""The whole extraction with packed ASR against unpacked ASR on the same machine, in one run.

    python benchmarks/meld_e2e_pack.py --out cache/meld_tts --clips 1344 [--write-md F]

``meld_e2e.py`` sets its extraction against a rate recorded on another machine (2.83 clips/s):
machines of one kind differ (tiny.en unpacked took 0.32 s a clip there and 0.42 s on an AMD
EPYC VM). This runs the first ``--clips`` clips of a finished meld_e2e folder (media, manifest
and models made; the list interleaves the splits, so a prefix is a proportional slice) through
all four features (siglip, emotion2vec, asr, bert) twice, each into an empty store of its own,
one ``extract`` call each (after a warm-up call on 8 other clips): ``asr.pack=false`` (the former default: batched unpacked windows,
which give the same words as one clip a window, 1.19x faster per asr.md) and the default
(packed). Same partitions, same threads. Prints one table: clips/s, model time per feature,
the ratio, and checks that siglip and emotion2vec are equal between the two stores.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import meld_e2e as E  # noqa: E402


def run_one(manifest: Path, store: Path, overrides: dict, pack: bool, dataset: str, chunk: int,
            progress: bool = False) -> dict:
    from clmer_features.engine import extract

    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    s = extract(manifest, E.all_features("emotion2vec"), store, dataset=dataset, model_overrides=overrides,
                device="cpu", params={"asr": {**E.ASR_PARAMS, "pack": pack}}, partition_size=chunk, progress=progress)
    wall = time.perf_counter() - t0
    d = E.summary_dict(s)
    d["wall_total_s"] = round(wall, 1)
    d["uptime"] = E.uptime()
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=E.ROOT / "cache" / "meld_tts", help="a finished meld_e2e folder")
    ap.add_argument("--clips", type=int, default=1344)
    ap.add_argument("--chunk", type=int, default=128, help="clips per partition (meld_e2e's chunk)")
    ap.add_argument("--packed-only", action="store_true",
                    help="run packed only and set it against meld_e2e's recorded per-clip rate (another host)")
    ap.add_argument("--write-md", type=Path)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    from clmer_features.manifest import read_manifest
    from clmer_features.store import open_store

    out = a.out.resolve()
    full = out / "meld_tts.csv"
    if not full.exists():
        sys.exit(f"{full}: no meld_e2e manifest here; run benchmarks/meld_e2e.py --out {a.out} first")
    man = read_manifest(full)
    sub = out / f"pack_compare_{a.clips}.csv"
    pl.read_csv(full, infer_schema=False).head(a.clips).write_csv(sub)
    overrides = E.model_overrides(out, "emotion2vec")
    warm = out / "pack_compare_warmup.csv"  # imports, first-call set-up and the media's pages: paid by neither run
    pl.read_csv(full, infer_schema=False).slice(a.clips, 8).write_csv(warm)
    run_one(warm, out / "store_pack_warmup", overrides, True, man.dataset, a.chunk)
    before = E.uptime()
    res = {}
    modes = [("packed (default)", True)] if a.packed_only else [("unpacked (asr.pack=false)", False), ("packed (default)", True)]
    for name, pack in modes:
        res[name] = run_one(sub, out / f"store_pack_{pack}", overrides, pack, man.dataset, a.chunk,
                            progress=not a.quiet)
        print(name, json.dumps({k: res[name][k] for k in ("wall_s", "clips_per_s")}), file=sys.stderr)
    if a.packed_only:
        return packed_only(a, res["packed (default)"], before, out, man.dataset)
    u, p = (open_store(out / f"store_pack_{k}", man.dataset) for k in (False, True))
    ids = pl.read_csv(sub, infer_schema=False)["clip_id"].to_list()
    same = {f: v["equal_arrays"] for f, v in E.same_arrays(u, p, ids, ["siglip", "emotion2vec"]).items()}
    specs = {f: (u.feature(f).spec.spec_id, p.feature(f).spec.spec_id) for f in FEATURES}
    (ru, rp) = res.values()
    ratio = rp["clips_per_s"] / ru["clips_per_s"]
    body = [f"The first {a.clips} of meld_e2e's 6,719 clips (its list interleaves train, dev and test), all four "
            "features, each run one `extract` call into an empty store, partitions of "
            f"{a.chunk} clips; a warm-up call on 8 other clips first, then unpacked, then packed.", "",
            f"Load (`uptime`): before `{before}`; after unpacked `{ru['uptime']}`; after packed `{rp['uptime']}`.", "",
            *TABLE_HEAD, *(_row(name, r, "baseline" if r is ru else f"{ratio:.2f}x") for name, r in res.items()), "",
            f"- Packed against unpacked, whole extraction: {ratio:.2f}x (>= 2.5x: {'yes' if ratio >= 2.5 else 'NO'}).",
            f"- siglip arrays equal on {same['siglip']} of {len(ids)} clips, emotion2vec on {same['emotion2vec']} "
            f"of {len(ids)}; spec ids (unpacked, packed): "
            + "; ".join(f"{f} {a_} / {b_}" for f, (a_, b_) in specs.items()) + "."]
    return _report(a, "The whole extraction, packed ASR against unpacked, same machine, one run", body,
                   {"clips": a.clips, "runs": res, "same": same, "specs": specs, "ratio": ratio})


FEATURES = ("siglip", "emotion2vec", "asr", "bert")
TABLE_HEAD = ["| run | clips | wall s | clips/s | model s: siglip, emotion2vec, asr, bert | decode s (waited) | ratio |",
              "|---|---|---|---|---|---|---|"]


def _row(name: str, r: dict, ratio: str) -> str:
    ms = ", ".join(f"{r['model_s'][f]:.0f}" if "model_s" in r else f"{r['features'][f]['model_s']:.0f}"
                   for f in FEATURES)
    return (f"| {name} | {r['clips']} | {r['wall_s']:.0f} | {r['clips_per_s']:.2f} | {ms} | "
            f"{r['decode_s']:.0f} ({r['decode_wait_s']:.0f}) | {ratio} |")


def _report(a: argparse.Namespace, title: str, body: list[str], record: dict) -> int:
    """Print the report (title, machine and revision, ``body``); write it and its record when asked."""
    from clmer_fusion.record import git_revision, machine

    rev, m = git_revision(), machine()
    flags = "--packed-only " if a.packed_only else ""
    lines = [f"# {title}", "",
             f"Machine: {m['platform']}, {m['cpus']} CPUs, no GPU. Code revision "
             f"{rev.get('commit', '?')[:12]}{' (with uncommitted changes)' if rev.get('dirty') else ''}; made by "
             f"`benchmarks/meld_e2e_pack.py {flags}--clips {a.clips}` on the media of a finished `meld_e2e.py` run.",
             "", *body]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write_md:
        a.write_md.write_text(text)
        a.write_md.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return 0


def packed_only(a: argparse.Namespace, r: dict, before: str, out: Path, dataset: str) -> int:
    """The packed run against the rate meld_e2e recorded with per-clip ASR (another host, its
    growing protocol): what the issue's must-show names; the same-machine ratio is the other mode."""
    from clmer_features.store import open_store

    b = E.BASELINE
    ratio = r["clips_per_s"] / b["clips_per_s"]
    st = open_store(out / "store_pack_True", dataset)
    specs = {f: st.feature(f).spec.spec_id for f in FEATURES}
    body = [f"Load (`uptime`): before `{before}`; after `{r['uptime']}`.", "", *TABLE_HEAD,
            _row(f"recorded per-clip ASR (commit {b['revision']}, another host, load {b['load']}, growing steps)",
                 b, "baseline"),
            _row("packed (default), one extract call", r, f"{ratio:.2f}x"), "",
            f"- {ratio:.2f}x the recorded rate (>= 2.5x: {'yes' if ratio >= 2.5 else 'NO'}); spec ids: "
            + ", ".join(f"{f} {v}" for f, v in specs.items()) + "."]
    return _report(a, "The whole extraction with packed ASR in one call, against the recorded per-clip rate", body,
                   {"clips": a.clips, "run": r, "specs": specs, "ratio": ratio, "baseline": b})


if __name__ == "__main__":
    sys.exit(main())
