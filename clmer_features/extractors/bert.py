"""BERT text features: token rows (``values``) and the CLS vector (``pooled``).

The text is the manifest's ``text`` when a row has one, else the transcript
the ``asr`` feature stored for the clip. The spec's ``text_source`` records
which: ``"manifest"`` when every row has its text, otherwise
``"manifest|asr:<asr spec_id>"`` (transcripts of that exact ASR spec). A row
with neither is recorded as absent text.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clmer_features.extractors.base import ClipOutput, DecodedClip, Extractor, register
from clmer_features.models import ensure_offline, folder_state, prove_loaded, quiet_transformers, require_files, weights_digest
from clmer_features.spec import FeatureSpec


# Tensors of a bert-base-uncased checkpoint that BertModel has no place for (pre-training heads).
BERT_HEADS = ("cls.*",)


def _has_text(row: dict[str, Any]) -> bool:
    t = row.get("text")
    return isinstance(t, str) and bool(t.strip())


@register
class BertExtractor(Extractor):
    name = "bert"
    input = "text"
    default_model = "bert-base-uncased"
    format_version = 1

    def __init__(self, model_dir: Path, device: str = "cpu", *, max_length: int = 512,
                 pooled: str = "cls", text_batch: int = 32, **params: Any) -> None:
        if params:
            raise TypeError(f"bert: unknown parameter(s) {sorted(params)}; known: max_length, pooled, text_batch")
        super().__init__(model_dir, device)
        if pooled not in ("cls", "pooler"):
            raise ValueError(f"bert: pooled must be 'cls' or 'pooler', not {pooled!r}")
        self.max_length = int(max_length)
        self.pooled_kind = pooled
        self.text_batch = int(text_batch)
        self.text_source = "manifest"
        self.transcripts: dict[str, str] = {}
        self.model: Any = None
        self.tokenizer: Any = None

    # --- where the text comes from --------------------------------------------
    def prepare(self, context: Any) -> None:
        """Decide the text source from the manifest and the run's/store's ASR spec."""
        rows = context.rows
        if all(_has_text(r) for r in rows):
            self.text_source = "manifest"
            return
        asr_spec = context.spec_of("asr")
        self.text_source = f"manifest|asr:{asr_spec.spec_id}" if asr_spec is not None else "manifest"

    @property
    def uses_asr(self) -> bool:
        return "asr:" in self.text_source

    def writer_input(self) -> str:
        return "text_or_media" if self.uses_asr else "text"

    def key_family(self, row: dict[str, Any]) -> str:
        return "text" if (_has_text(row) or not self.uses_asr) else "media"

    def set_transcripts(self, transcripts: dict[str, str]) -> None:
        """media clip key -> transcript text (from the ASR feature named in text_source)."""
        self.transcripts = transcripts

    def text_of(self, clip: DecodedClip) -> str | None:
        if _has_text(clip.row):
            return str(clip.row["text"])
        if self.uses_asr:
            t = self.transcripts.get(clip.keys.get("media", ""))
            return t if t and t.strip() else None
        return None

    def missing_input(self, clip: DecodedClip) -> tuple[str, str] | None:
        if self.text_of(clip) is not None:
            return None
        if self.uses_asr and clip.keys.get("media") in self.transcripts:
            return ("absent", "the ASR transcript is empty")
        how = "and no ASR transcript" if self.uses_asr else "(run asr to transcribe it)"
        return ("absent", f"no text in the manifest {how}")

    # --- spec and model ----------------------------------------------------------
    def spec(self) -> FeatureSpec:
        require_files(self.model_dir, ("config.json",), self.name)
        return FeatureSpec.create(
            self.name,
            model_id=self.default_model,  # the weights digest says which weights; paths stay out
            weights_digest=weights_digest(self.model_dir),
            format_version=self.format_version,
            params={"max_length": self.max_length, "pooled": self.pooled_kind,
                    "output": "last_hidden_state", "text_source": self.text_source},
        )

    def load(self) -> None:
        if self.model is not None:
            return
        require_files(self.model_dir, ("config.json",), self.name)
        ensure_offline()
        quiet_transformers()
        import torch
        from transformers import AutoTokenizer, BertModel

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        state = folder_state(self.model_dir)  # read safely first: a bad file is refused in one line
        model = BertModel.from_pretrained(str(self.model_dir), local_files_only=True)
        model.eval()
        if self.device.startswith("cuda"):
            model = model.to(self.device, dtype=torch.float16)
        # a pre-training checkpoint's heads (cls.*) are not part of BertModel; a checkpoint
        # saved without the pooler leaves it random: only cls rows are used unless pooled="pooler"
        prove_loaded(model, state, self.name, self.model_dir, unused=BERT_HEADS,
                         allowed_missing=("pooler.*",) if self.pooled_kind == "cls" else ())
        self.model = model

    def unload(self) -> None:
        self.model = None
        self.tokenizer = None

    def embed_texts(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(token rows [T, D], pooled [D]) per text."""
        import torch

        self.load()
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for i in range(0, len(texts), self.text_batch):
            enc = self.tokenizer(texts[i:i + self.text_batch], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            enc = {k: v.to(self.model.device) for k, v in enc.items()}
            with torch.inference_mode():
                res = self.model(**enc)
            hidden = res.last_hidden_state.float().cpu().numpy()
            if self.pooled_kind == "pooler" and res.pooler_output is not None:
                pooled = res.pooler_output.float().cpu().numpy()
            else:
                pooled = hidden[:, 0]
            lengths = enc["attention_mask"].sum(dim=1).cpu().numpy()
            for j, n in enumerate(lengths):
                out.append((hidden[j, : int(n)], pooled[j]))
        return out

    def extract(self, clips: list[DecodedClip]) -> list[ClipOutput | Exception]:
        results: list[ClipOutput | Exception] = []
        todo: list[tuple[int, str]] = []
        for i, c in enumerate(clips):
            text = self.text_of(c)
            if text is None:
                results.append(ValueError(f"{c.clip_id}: {self.missing_input(c)[1]}"))
            else:
                results.append(ClipOutput())
                todo.append((i, text))
        for (i, _), (rows, pooled) in zip(todo, self.embed_texts([t for _, t in todo])):
            results[i] = ClipOutput(values=rows, pooled=pooled)
        return results
