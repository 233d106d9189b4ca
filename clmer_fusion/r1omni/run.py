"""Decode a whole manifest with R1-Omni from the feature cache and score it.

Reads ``r1omni_vision`` (``[T*N, C]`` rows a clip, reshaped with the spec's
``shape``) and ``r1omni_audio`` (``[R, C]``) from the store, decodes clips in
batches (one instruction, one prompt length: no padding), and writes into
the output folder:

- ``clips/<clip>.json`` per clip (think, answer, text, tokens, ...), written
  as each batch ends, so a crash loses at most one batch; a rerun with the
  same model, instruction and features skips the clips already there;
- ``combined_results.csv``: one row per clip with its label and verdict;
- ``score.json``: exact-match WAR/UAR after the synonym map, OV-MER style
  set-level precision/recall/F1, and the run record (model, instruction,
  spec ids, manifest fingerprint, versions, timings).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import polars as pl

from clmer_features.errors import ClmerError, StoreError
from clmer_fusion.r1omni.defaults import DEFAULT_INSTRUCTION
from clmer_fusion.r1omni.score import normalize_label, ov_scores, score
from clmer_fusion.record import git_revision, machine, package_versions
from clmer_fusion.request import Request, open_sources

VISION, AUDIO = "r1omni_vision", "r1omni_audio"


@dataclass
class RunSummary:
    out_dir: Path
    clips: int = 0
    decoded: int = 0
    reused: int = 0
    no_features: list[str] = field(default_factory=list)
    seconds: float = 0.0
    decode_seconds: float = 0.0
    scores: dict[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        ex, ov = self.scores.get("exact", {}), self.scores.get("open_vocabulary", {})

        def pct(x: Any) -> str:
            return "-" if x is None else f"{100 * x:.1f}%"

        per = self.decode_seconds / self.decoded if self.decoded else 0.0
        lines = [
            f"r1omni: {self.clips} clips: {self.decoded} decoded ({per:.3f} s/clip), {self.reused} reused, "
            f"{len(self.no_features)} without cached features; {self.seconds:.1f} s in all",
            f"  exact  (n={ex.get('n', 0)}): WAR {pct(ex.get('war'))}  UAR {pct(ex.get('uar'))}",
            f"  open-vocabulary (n={ov.get('n', 0)}): precision {pct(ov.get('precision'))}  "
            f"recall {pct(ov.get('recall'))}  F1 {pct(ov.get('f1'))}",
            f"  results in {self.out_dir}",
        ]
        if self.no_features:
            lines.insert(1, f"  no features for: {', '.join(self.no_features[:5])}"
                            + (" ..." if len(self.no_features) > 5 else ""))
        return "\n".join(lines)


def clip_filename(clip_id: str) -> str:
    """A safe, unique file name for a clip id."""
    safe = re.sub(r"[^\w.-]", "_", clip_id)[:100]
    if safe != clip_id or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha1(clip_id.encode()).hexdigest()[:8]}"
    return f"{safe}.json"


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _stack(feat: Any, ids: Sequence[str], shape: Sequence[int]) -> np.ndarray:
    arrays = feat.get_many(list(ids))
    want = int(np.prod(shape[:-1]))
    for cid, a in zip(ids, arrays):
        if a.shape != (want, shape[-1]):
            raise StoreError(f"{feat.spec.feature}: clip {cid} has shape {a.shape}, spec says {tuple(shape)}")
    return np.stack([a.reshape(*shape) for a in arrays])


def run_r1omni(
    manifest: str | Path,
    cache_dir: str | Path,
    model_dir: str | Path,
    *,
    instruction: str = DEFAULT_INSTRUCTION,
    out_dir: str | Path | None = None,
    dataset: str | None = None,
    spec_ids: dict[str, str] | None = None,
    check_fresh: bool = False,
    bert_dir: str | Path | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    allow_mismatch: bool = False,
    device: str = "auto",
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> RunSummary:
    """Decode every clip of ``manifest`` from the cache; see the module doc.

    ``spec_ids`` picks a spec per feature (``{"r1omni_vision": "a267ba3ec6d0"}``) where the store
    holds several; without it a feature must hold exactly one finalized spec. The manifest gives
    ids and labels only (its media are not read unless ``check_fresh``).
    """
    from tqdm.auto import tqdm

    from clmer_fusion.r1omni.decode import R1OmniDecoder
    from clmer_fusion.r1omni.load import load_r1omni

    t0 = time.perf_counter()
    if batch_size < 1 or max_new_tokens < 1:
        raise ClmerError("--batch-size and --max-new-tokens must be >= 1")
    req = Request.create(manifest, cache_dir, (VISION, AUDIO), spec_ids=spec_ids, dataset=dataset,
                         level="frame", check_fresh=check_fresh)
    src = open_sources(req, optional=(VISION, AUDIO))
    m, store = src.manifest, src.store
    feats = {n: src.readers.get(n) for n in (VISION, AUDIO)}
    if all(f is None for f in feats.values()):
        raise StoreError(f"{store.root}: neither {VISION} nor {AUDIO} is cached; run "
                         f"`clmer-features extract {manifest} --features {VISION},{AUDIO}` first")
    dev = _resolve_device(device)
    loaded = load_r1omni(model_dir, bert_dir=bert_dir, allow_mismatch=allow_mismatch, device=dev)
    if echo:
        echo(f"r1omni: loaded {model_dir} ({loaded.report.describe()}) on {dev}")
    cfg = loaded.model.cfg
    shapes = {n: list(f.spec.params["shape"]) for n, f in feats.items() if f is not None}
    for name, dim in ((VISION, cfg.vision_dim), (AUDIO, cfg.audio_dim)):
        if name in shapes and shapes[name][-1] != dim:
            raise ClmerError(f"{name} in the cache is {shapes[name][-1]}-d but the model expects {dim}-d "
                             f"(cached with another tower? spec {feats[name].spec.describe()})")
    decoder = R1OmniDecoder(loaded, instruction, max_new_tokens)

    spec_ids = {n: f.spec.spec_id for n, f in feats.items() if f is not None}
    if echo:
        echo("r1omni: features " + "; ".join(f.spec.describe() for f in feats.values() if f is not None))
    run_key = hashlib.sha256(json.dumps(
        [loaded.report.fingerprint, instruction, max_new_tokens, spec_ids], sort_keys=True).encode()).hexdigest()[:16]
    out = Path(out_dir) if out_dir else Path("r1omni-results") / f"{m.dataset}-{run_key[:8]}"
    (out / "clips").mkdir(parents=True, exist_ok=True)

    rows = {r["clip_id"]: r for r in m.rows()}
    summary = RunSummary(out_dir=out, clips=len(rows))
    groups: dict[tuple[str, ...], list[str]] = {}
    for cid in rows:
        path = out / "clips" / clip_filename(cid)
        if path.exists():
            try:
                if json.loads(path.read_text(encoding="utf-8")).get("run_key") == run_key:
                    summary.reused += 1
                    continue
            except ValueError:
                pass  # a broken file is redone
        mods = tuple(mod for mod, n in (("video", VISION), ("audio", AUDIO)) if feats[n] is not None and cid in feats[n])
        if mods:
            groups.setdefault(mods, []).append(cid)
        else:
            summary.no_features.append(cid)

    todo = sum(len(v) for v in groups.values())
    bar = tqdm(total=todo, desc="r1omni decode", unit="clip", disable=not progress)
    t_dec = time.perf_counter()
    for mods, ids in groups.items():
        for i in range(0, len(ids), batch_size):
            chunk = ids[i : i + batch_size]
            vis = _stack(feats[VISION], chunk, shapes[VISION]) if "video" in mods else None
            aud = _stack(feats[AUDIO], chunk, shapes[AUDIO]) if "audio" in mods else None
            for cid, g in zip(chunk, decoder.decode(vis, aud)):
                label = rows[cid].get("label")
                _atomic_json(out / "clips" / clip_filename(cid), {
                    "clip_id": cid, "label": label, "think": g.think, "answer": g.answer,
                    "prediction": normalize_label(g.answer), "format_ok": g.format_ok, "text": g.text,
                    "tokens": g.tokens, "modalities": list(mods), "run_key": run_key,
                })
            summary.decoded += len(chunk)
            bar.update(len(chunk))
    bar.close()
    summary.decode_seconds = time.perf_counter() - t_dec

    results = []
    for cid, row in rows.items():
        path = out / "clips" / clip_filename(cid)
        if path.exists():
            r = json.loads(path.read_text(encoding="utf-8"))
            if r.get("run_key") == run_key:
                results.append(r)
    table = pl.DataFrame(
        [{"clip_id": r["clip_id"], "label": r["label"], "answer": r["answer"], "prediction": r["prediction"],
          "correct": (normalize_label(r["label"]) == r["prediction"]) if r["label"] else None,
          "format_ok": r["format_ok"], "modalities": "+".join(r["modalities"]), "think": r["think"]}
         for r in results],
        schema={"clip_id": pl.String, "label": pl.String, "answer": pl.String, "prediction": pl.String,
                "correct": pl.Boolean, "format_ok": pl.Boolean, "modalities": pl.String, "think": pl.String},
    )
    table.write_csv(out / "combined_results.csv")
    answers = [r["answer"] for r in results]
    summary.scores = score([r["label"] for r in results], answers)
    # open-vocabulary gold sets: the manifest's `openset` column where it has one (MER OV track)
    if any(rows[r["clip_id"]].get("openset") for r in results):
        summary.scores["open_vocabulary"] = ov_scores([rows[r["clip_id"]].get("openset") for r in results], answers)
        summary.scores["open_vocabulary"]["gold_column"] = "openset"
    summary.seconds = time.perf_counter() - t0
    _atomic_json(out / "score.json", {
        **summary.scores,
        "format_ok": sum(bool(r["format_ok"]) for r in results),
        "clips": summary.clips, "answered": len(results), "no_features": summary.no_features,
        "record": {
            "manifest": str(m.path), "dataset": m.dataset, "model_dir": str(model_dir),
            "model_fingerprint": loaded.report.fingerprint, "load_report": loaded.report.describe(),
            "instruction": instruction, "max_new_tokens": max_new_tokens, "spec_ids": spec_ids,
            "gate_weights": decoder.gate().tolist()[0], "run_key": run_key, "device": dev,
            "decoded": summary.decoded, "reused": summary.reused,
            "decode_seconds": summary.decode_seconds, "seconds": summary.seconds,
            "manifest_fingerprint": src.fingerprint(), "revision": git_revision(), "machine": machine(),
            "versions": package_versions(),
        },
    })
    return summary
