"""Text family: any transformers text encoder (RoBERTa, MacBERT, XLM-R, BERT ...), token rows.

``AutoModel`` + ``AutoTokenizer`` from the folder, both driven by its
``config.json``: hfl's chinese-roberta-wwm-ext(-large) and chinese-macbert
are BERT checkpoints (``model_type: bert``) whose ``tokenizer_config.json``
names no class, so they load as ``BertModel`` with a BERT tokenizer, as hfl
says to load them (never ``RobertaModel``).

As MERTools' text script does by default: one row per token of ``layer``
(the presets sum the last 4 hidden states), the special tokens ([CLS],
[SEP], <s> ...) dropped (``special_tokens=keep`` keeps them), and the pooled
vector is the mean of the rows (``pooled=cls`` takes the CLS row instead).
MERTools never truncates, so a text past the model's 512 positions crashes
there; here it is cut at ``max_length`` tokens. Texts of a batch are padded
and masked, which leaves each text's numbers as they are alone.

The text is the manifest's ``text`` where a row has one, else the ``asr``
transcript of the clip (the feature ``requires`` asr), exactly as ``bert``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clmer_features.extractors import hf_common as H
from clmer_features.extractors.base import Extractor, ExtractorConfig, param
from clmer_features.extractors.text_source import TextFromManifestOrAsr
from clmer_features.spec import FeatureSpec


@dataclass(frozen=True)
class TextEncoderConfig(ExtractorConfig):
    layer: str = param("last", H.LAYER_HELP)
    special_tokens: str = param("drop", "rows of special tokens ([CLS], [SEP], <s> ...): drop (MERTools) or keep",
                                choices=("drop", "keep"))
    pooled: str = param("mean", "utterance vector: mean of the rows (MERTools) or the CLS row of the layer",
                        choices=("mean", "cls"))
    max_length: int = param(512, "tokens per text, special tokens included (longer texts are cut)", minimum=2)
    text_batch: int = param(32, "texts per forward pass", spec=False, minimum=1)


class TextEncoderExtractor(TextFromManifestOrAsr, Extractor):
    """Any transformers text encoder; a feature is a preset of it (``presets.py``)."""

    name = "hf_text"
    family = "text"
    input = "text"
    Config = TextEncoderConfig
    format_version = 1
    output = "[tokens, D] one row per token + pooled [D] (mean over tokens)"

    def __init__(self, model_dir: Path | None, config: TextEncoderConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        self.layer = H.check_layer(self.name, self.config.layer)
        self.model: Any = None
        self.tokenizer: Any = None

    def spec(self) -> FeatureSpec:
        return H.family_spec(self, {**self.config.spec_params(), "layer": self.layer,
                                    "text_source": self.text_source})

    def load(self) -> None:
        if self.model is not None:
            return
        folder = H.model_folder(self)
        model = H.load_model(folder, self.name, device=self.device, unused_pooler=True)
        self.tokenizer = H.load_processor(folder, self.name, "AutoTokenizer")
        self.model = model

    def unload(self) -> None:
        self.model = None
        self.tokenizer = None

    def embed_texts(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text (token rows [T, D], pooled [D])."""
        import torch

        self.load()
        c = self.config
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for i in range(0, len(texts), c.text_batch):
            enc = self.tokenizer(texts[i:i + c.text_batch], padding=True, truncation=True, max_length=c.max_length,
                                 return_special_tokens_mask=True, return_tensors="pt")
            special = enc.pop("special_tokens_mask").bool()
            keep = enc["attention_mask"].bool()
            if c.special_tokens == "drop":
                keep &= ~special
            enc = {k: v.to(self.model.device) for k, v in enc.items()}
            with torch.inference_mode():
                res = self.model(**enc, output_hidden_states=H.needs_hidden_states(self.layer))
            h = H.to_numpy(H.pick_layer(res, self.layer))
            for j in range(h.shape[0]):
                rows = h[j][keep[j].numpy()]
                if len(rows) == 0:  # a text of special tokens only: its rows are all there is
                    rows = h[j][enc["attention_mask"][j].cpu().numpy().astype(bool)]
                out.append((rows, H.mean_rows(rows) if c.pooled == "mean" else h[j, 0].copy()))
        return out
