"""BERT text features: token rows (``values``) and the CLS vector (``pooled``).

The text is the manifest's ``text`` when a row has one, else the transcript
the ``asr`` feature stored for the clip. The spec's ``text_source`` records
which: ``"manifest"`` when every row has its text, otherwise
``"manifest|asr:<asr spec_id>"`` (transcripts of that exact ASR spec). A row
with neither is recorded as absent text.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clmer_features.errors import StoreError
from clmer_features.extractors.base import (
    ClipOutput, DecodedClip, Extractor, ExtractorConfig, RunInputs, param, register,
)
from clmer_features.models import ensure_offline, folder_state, prove_loaded, quiet_transformers, require_files, weights_digest
from clmer_features.spec import FeatureSpec


# Tensors of a bert-base-uncased checkpoint that BertModel has no place for (pre-training heads).
BERT_HEADS = ("cls.*",)


def _has_text(row: dict[str, Any]) -> bool:
    t = row.get("text")
    return isinstance(t, str) and bool(t.strip())


@dataclass(frozen=True)
class BertConfig(ExtractorConfig):
    max_length: int = param(512, "tokens per text (longer texts are cut)", minimum=1)
    pooled: str = param("cls", "utterance vector: the CLS token's row, or BERT's pooler output",
                        choices=("cls", "pooler"))
    text_batch: int = param(32, "texts per forward pass", spec=False, minimum=1)


@register
class BertExtractor(Extractor):
    name = "bert"
    family = "text"
    input = "text"
    Config = BertConfig
    default_model = "bert-base-uncased"
    format_version = 1
    requires = ("asr",)  # transcripts, for rows without manifest text
    output = "[tokens, hidden] last hidden state + pooled [hidden]"

    def __init__(self, model_dir: Path | None, config: BertConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        self.max_length = self.config.max_length
        self.pooled_kind = self.config.pooled
        self.text_batch = self.config.text_batch
        self.text_source = "manifest"
        self._inputs: RunInputs | None = None
        self._transcripts: dict[str, str] | None = None
        self.model: Any = None
        self.tokenizer: Any = None

    # --- where the text comes from --------------------------------------------
    def bind(self, inputs: RunInputs) -> None:
        """The text source: the manifest when every row of the store's manifest snapshot has
        text, else also the transcripts of the ``asr`` spec handed over (read from the store
        when first needed, so after asr has run)."""
        self._inputs, self._transcripts = inputs, None
        clips = inputs.store().clips()
        rows = clips.select("text").to_dicts() if clips is not None and "text" in clips.columns else []
        asr_spec = inputs.spec_of("asr")
        if all(_has_text(r) for r in rows) or asr_spec is None:
            self.text_source = "manifest"
        else:
            self.text_source = f"manifest|asr:{asr_spec.spec_id}"

    @property
    def uses_asr(self) -> bool:
        return "asr:" in self.text_source

    @property
    def transcripts(self) -> dict[str, str]:
        """media clip key -> transcript (of the asr spec in ``text_source``), read once per bind."""
        if self._transcripts is None:
            self._transcripts = {}
            spec = self._inputs.spec_of("asr") if (self._inputs is not None and self.uses_asr) else None
            if spec is not None:
                try:
                    rec = self._inputs.store().feature("asr", spec=spec).records()
                except StoreError:
                    rec = None
                if rec is not None and "text" in rec.columns:
                    self._transcripts = {k: (t or "") for k, t in rec.select("clip_key", "text").iter_rows()}
        return self._transcripts

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
            params={**self.config.spec_params(), "output": "last_hidden_state", "text_source": self.text_source},
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
