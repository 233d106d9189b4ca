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
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import polars as pl

from clmer_features.device import resolve_device
from clmer_features.errors import ClmerError, StoreError
from clmer_features.store.layout import atomic_write_bytes
from clmer_fusion.r1omni.defaults import DEFAULT_INSTRUCTION, DEFAULT_MAX_NEW_TOKENS, NO_AUDIO_POLICIES, SILENCE_SECONDS
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
    atomic_write_bytes(path, json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8"))




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
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    no_audio: str = "silence",
    audio_tower: str | Path | None = None,
    allow_mismatch: bool = False,
    device: str = "auto",
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> RunSummary:
    """Decode every clip of ``manifest`` from the cache; see the module doc.

    ``spec_ids`` picks a spec per feature (``{"r1omni_vision": "a267ba3ec6d0"}``) where the store
    holds several; without it a feature must hold exactly one finalized spec. The manifest gives
    ids and labels only (its media are not read unless ``check_fresh``). ``no_audio``: a clip with
    video but no audio gets the audio tower's output of 10 s of silence, as the official inference
    gives it ("silence"; needs ``audio_tower``, the Whisper folder that made r1omni_audio, or that
    model under the models dir), or is decoded from its video alone ("video-only").
    """
    from tqdm.auto import tqdm

    from clmer_fusion.r1omni.decode import R1OmniDecoder
    from clmer_fusion.r1omni.load import load_r1omni

    t0 = time.perf_counter()
    if batch_size < 1 or max_new_tokens < 1:
        raise ClmerError("--batch-size and --max-new-tokens must be >= 1")
    if no_audio not in NO_AUDIO_POLICIES:
        raise ClmerError(f"--no-audio must be {' or '.join(NO_AUDIO_POLICIES)}, not {no_audio!r}")
    req = Request.create(manifest, cache_dir, (VISION, AUDIO), spec_ids=spec_ids, dataset=dataset,
                         level="frame", check_fresh=check_fresh)
    src = open_sources(req, optional=(VISION, AUDIO))
    m, store = src.manifest, src.store
    feats = {n: src.readers.get(n) for n in (VISION, AUDIO)}
    if all(f is None for f in feats.values()):
        raise StoreError(f"{store.root}: neither {VISION} nor {AUDIO} is cached; run "
                         f"`clmer-features extract {manifest} --features {VISION},{AUDIO}` first")
    dev = resolve_device(device)
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
    gen = {"max_new_tokens": max_new_tokens, **decoder.generation.to_dict(), "tokenizer": loaded.report.tokenizer}
    run_key = hashlib.sha256(json.dumps(
        [loaded.report.fingerprint, instruction, max_new_tokens, spec_ids, no_audio, gen],
        sort_keys=True).encode()).hexdigest()[:16]
    out = Path(out_dir) if out_dir else Path("r1omni-results") / f"{m.dataset}-{run_key[:8]}"
    (out / "clips").mkdir(parents=True, exist_ok=True)

    rows = {r["clip_id"]: r for r in m.rows()}
    summary = RunSummary(out_dir=out, clips=len(rows))
    groups: dict[tuple[tuple[str, ...], bool], list[str]] = {}     # (modalities, audio is silence)
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
        if mods == ("video",) and no_audio == "silence":
            groups.setdefault((("video", "audio"), True), []).append(cid)
        elif mods:
            groups.setdefault((mods, False), []).append(cid)
        else:
            summary.no_features.append(cid)
    silent = [cid for (_, s), ids in groups.items() if s for cid in ids]
    silence = _silence(feats[AUDIO], audio_tower, len(silent), echo) if silent else None

    todo = sum(len(v) for v in groups.values())
    bar = tqdm(total=todo, desc="r1omni decode", unit="clip", disable=not progress)
    t_dec = time.perf_counter()
    for (mods, is_silent), ids in groups.items():
        for i in range(0, len(ids), batch_size):
            chunk = ids[i : i + batch_size]
            vis = _stack(feats[VISION], chunk, shapes[VISION]) if "video" in mods else None
            if is_silent:
                aud = np.broadcast_to(silence, (len(chunk), *silence.shape)).copy()
            else:
                aud = _stack(feats[AUDIO], chunk, shapes[AUDIO]) if "audio" in mods else None
            for cid, g in zip(chunk, decoder.decode(vis, aud)):
                label = rows[cid].get("label")
                _atomic_json(out / "clips" / clip_filename(cid), {
                    "clip_id": cid, "label": label, "think": g.think, "answer": g.answer,
                    "prediction": normalize_label(g.answer), "format_ok": g.format_ok, "text": g.text,
                    "tokens": g.tokens, "modalities": list(mods), "audio_is_silence": is_silent, "run_key": run_key,
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
            "generation": gen, "no_audio": no_audio, "silence_clips": silent,
            "audio_tower": str(audio_tower) if silent else None,
            "gate_weights": decoder.gate().tolist()[0], "run_key": run_key, "device": dev,
            "decoded": summary.decoded, "reused": summary.reused,
            "decode_seconds": summary.decode_seconds, "seconds": summary.seconds,
            "manifest_fingerprint": src.fingerprint(), "revision": git_revision(), "machine": machine(),
            "versions": package_versions(),
        },
    })
    return summary


def _silence(audio: Any, tower: str | Path | None, n: int, echo: Callable[[str], None] | None) -> np.ndarray:
    """The cached audio feature's value for 10 s of silence (official inference for a clip without audio)."""
    from clmer_features.errors import ModelNotFoundError
    from clmer_fusion.r1omni.silence import silence_features

    hint = "or --no-audio video-only to decode them from their video alone"
    if audio is None:
        raise ClmerError(f"{n} clip(s) have video but no cached audio and {AUDIO} is not in the store: R1-Omni's "
                         f"inference gives them 10 s of silence through the audio tower; extract {AUDIO}, {hint}")
    if tower is None:
        from clmer_features.models import resolve_model_dir

        try:
            tower = resolve_model_dir(AUDIO, default_model=audio.spec.model_id)
        except ModelNotFoundError:
            raise ClmerError(f"{n} clip(s) have no audio: R1-Omni's inference gives them 10 s of silence through "
                             f"the audio tower; pass --audio-tower DIR (the {audio.spec.model_id} folder that made "
                             f"{AUDIO}), {hint}") from None
    if echo:
        echo(f"r1omni: {n} clip(s) without audio get 10 s of silence through {tower}")
    return silence_features(tower, audio.spec, SILENCE_SECONDS)
