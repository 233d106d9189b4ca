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

from clmer_features.extractors.base import Extractor, ExtractorConfig, param, register
from clmer_features.extractors.text_source import TextFromManifestOrAsr
from clmer_features.models import ensure_offline, folder_state, prove_loaded, quiet_transformers, require_files, weights_digest
from clmer_features.spec import FeatureSpec


# Tensors of a bert-base-uncased checkpoint that BertModel has no place for (pre-training heads).
BERT_HEADS = ("cls.*",)


@dataclass(frozen=True)
class BertConfig(ExtractorConfig):
    max_length: int = param(512, "tokens per text (longer texts are cut)", minimum=1)
    pooled: str = param("cls", "utterance vector: the CLS token's row, or BERT's pooler output",
                        choices=("cls", "pooler"))
    text_batch: int = param(32, "texts per forward pass", spec=False, minimum=1)


@register
class BertExtractor(TextFromManifestOrAsr, Extractor):
    name = "bert"
    family = "text"
    input = "text"
    Config = BertConfig
    default_model = "bert-base-uncased"
    format_version = 1
    output = "[tokens, hidden] last hidden state + pooled [hidden]"

    def __init__(self, model_dir: Path | None, config: BertConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        self.max_length = self.config.max_length
        self.pooled_kind = self.config.pooled
        self.text_batch = self.config.text_batch
        self.model: Any = None
        self.tokenizer: Any = None

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
