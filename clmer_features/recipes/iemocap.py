"""IEMOCAP: five dyadic sessions, categorical emotion + valence/activation/dominance.

Layout of the release (``IEMOCAP_full_release``)::

    ROOT/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt
        [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]
    ROOT/Session{s}/dialog/transcriptions/<dialog>.txt
        Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.
    ROOT/Session{s}/sentences/wav/<dialog>/<utterance>.wav
    ROOT/Session{s}/dialog/avi/DivX/<dialog>.avi

Only the utterance lines (starting with ``[``) of EmoEvaluation files are
read; evaluator lines and sub-folders (Categorical/, Attribute/...) are not.
Options: ``classes=4`` (default; the usual benchmark: angry, happy with
excited merged in, neutral, sad; other labels are excluded and counted in a
note) or ``classes=all`` (every label; no-agreement ``xxx`` gets an empty
label). ``media=wav`` (default: the utterance wav) or ``media=avi`` (the
dialogue video with start/end). ``fold`` is the session number (1-5) for
leave-one-session-out; ``speaker`` is session + gender (``Ses01F``); the
columns ``session``, ``valence``, ``activation``, ``dominance`` are added.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from clmer_features.recipes.common import (
    AUDIO_EXTS, VIDEO_EXTS, MediaIndex, RecipeError, RecipeReport, RecipeResult,
    handle_missing, read_text, resolve_media,
)

NAME = "iemocap"
OPTIONS: dict[str, str] = {"classes": "4 (default) or all", "media": "wav (default) or avi"}
EMOTIONS = {
    "neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry", "fru": "frustrated",
    "sur": "surprised", "fea": "fearful", "dis": "disgusted", "oth": "other", "xxx": None,
}
FOUR = {"ang": "angry", "hap": "happy", "exc": "happy", "neu": "neutral", "sad": "sad"}
LINE = re.compile(
    r"^\[\s*(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\s*\]\s+(?P<utt>Ses\d\d[FM]_\S+)\s+(?P<emo>\w+)\s+"
    r"\[\s*(?P<v>[\d.]+)\s*,\s*(?P<a>[\d.]+)\s*,\s*(?P<d>[\d.]+)\s*\]\s*$"
)
TRANSCRIPT = re.compile(r"^(?P<utt>Ses\d\d[FM]_\S+)\s+\[[^\]]*\]:\s?(?P<text>.*)$")


def _transcripts(path: Path, report: RecipeReport) -> dict[str, str]:
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in read_text(path, report).splitlines():
        m = TRANSCRIPT.match(line.strip())
        if m:
            out[m["utt"]] = m["text"].strip()
    return out


def build(root: Path, *, keep_missing: bool = False, classes: str = "4", media: str = "wav") -> RecipeResult:
    root = Path(root)
    if classes not in ("4", "all"):
        raise RecipeError(f"iemocap: classes must be 4 or all, not {classes!r}")
    if media not in ("wav", "avi"):
        raise RecipeError(f"iemocap: media must be wav or avi, not {media!r}")
    report = RecipeReport(NAME, str(root))
    sessions = sorted(p for p in root.glob("Session[1-5]") if p.is_dir())
    if not sessions:
        raise RecipeError(f"{root}: no Session1..Session5 folders (expected the IEMOCAP_full_release folder)")
    rows: list[dict[str, Any]] = []
    excluded: Counter[str] = Counter()
    seen: dict[str, str] = {}
    for sess in sessions:
        snum = int(sess.name[-1])
        eval_dir = sess / "dialog" / "EmoEvaluation"
        files = sorted(p for p in eval_dir.glob("*.txt") if not p.name.startswith("."))
        if not files:
            report.note(f"{eval_dir}: no EmoEvaluation files")
        avi = MediaIndex(sess / "dialog" / "avi" / "DivX", VIDEO_EXTS) if media == "avi" else None
        for ev in files:
            dialog = ev.stem
            fname = f"{sess.name}/dialog/EmoEvaluation/{ev.name}"
            texts = _transcripts(sess / "dialog" / "transcriptions" / ev.name, report)
            wavs = MediaIndex(sess / "sentences" / "wav" / dialog, AUDIO_EXTS) if media == "wav" else None
            for lineno, line in enumerate(read_text(ev, report).splitlines(), start=1):
                if not line.startswith("["):
                    continue
                report.rows_read += 1
                m = LINE.match(line.strip())
                if m is None:
                    report.add("unparseable_row", fname, lineno, None, f"not an utterance line: {line.strip()[:80]!r}", dropped=True)
                    continue
                utt, code = m["utt"], m["emo"]
                if code not in EMOTIONS:
                    report.add("unparseable_row", fname, lineno, "emotion", f"unknown emotion code {code!r}", dropped=True)
                    continue
                if classes == "4" and code not in FOUR:
                    excluded[code] += 1
                    continue
                if utt in seen:
                    report.add("duplicate_id", fname, lineno, "utterance", f"{utt} already in {seen[utt]}", dropped=True)
                    continue
                start, end = float(m["start"]), float(m["end"])
                gender = utt.rsplit("_", 1)[-1][:1]
                row: dict[str, Any] = {
                    "clip_id": utt, "text": texts.get(utt), "language": "en",
                    "label": FOUR[code] if classes == "4" else EMOTIONS[code],
                    "fold": str(snum), "speaker": f"Ses{snum:02d}{gender}", "session": sess.name,
                    "dialog": dialog, "emotion_code": code, "valence": float(m["v"]),
                    "activation": float(m["a"]), "dominance": float(m["d"]),
                }
                if media == "wav":
                    assert wavs is not None
                    path = resolve_media(wavs, utt, report, fname, lineno, "utterance")
                    col, expected = "audio", sess / "sentences" / "wav" / dialog / f"{utt}.wav"
                else:
                    assert avi is not None
                    path = resolve_media(avi, dialog, report, fname, lineno, "dialog")
                    col, expected = "video", sess / "dialog" / "avi" / "DivX" / f"{dialog}.avi"
                    if end <= start:
                        report.add("unparseable_row", fname, lineno, "end", f"end {end} <= start {start}", dropped=True)
                        continue
                    row["start"], row["end"] = start, end
                if path is None:
                    if not handle_missing(row, expected, col, report, fname, lineno, keep_missing):
                        continue
                else:
                    row[col] = str(path.resolve())
                if row["text"] is None:
                    report.add("missing_text", fname, lineno, "text", f"{utt} not in transcriptions/{ev.name}", dropped=False)
                seen[utt] = fname
                rows.append(row)
    if excluded:
        report.note("classes=4 excludes " + ", ".join(f"{k}: {v}" for k, v in sorted(excluded.items()))
                    + f" ({sum(excluded.values())} utterances; classes=all keeps them)")
    report.rows_written = len(rows)
    return RecipeResult(rows, report)
