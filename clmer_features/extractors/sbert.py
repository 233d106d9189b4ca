"""Sentence-transformers folders: the sentence embedding their own pooling config defines.

Reads a sentence-transformers folder (``modules.json``): the Transformer
module's checkpoint through ``AutoModel``/``AutoTokenizer`` (weights proven as
every family's), ``sentence_bert_config.json`` (max_seq_length, lowercasing),
the Pooling module's ``config.json`` (cls, max, mean, mean_sqrt_len_tokens,
weightedmean, lasttoken; several are concatenated in sentence-transformers'
order) and a Normalize module when listed. A folder with other modules (Dense
...) is refused with one line rather than computed differently. The numbers
equal ``SentenceTransformer(folder).encode`` (a test proves it) without running
any code from the folder. The Cross-Modal ER seed uses all-mpnet-base-v2, the
default folder id.

Rows are the transformer's token embeddings (special tokens included, as the
pooling sees them); the pooled vector is the sentence embedding. The text is
the manifest's, else the asr transcript, as ``bert``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clmer_features.errors import ModelNotFoundError
from clmer_features.extractors import hf_common as H
from clmer_features.extractors.base import Extractor, ExtractorConfig, param, register
from clmer_features.extractors.text_source import TextFromManifestOrAsr
from clmer_features.spec import FeatureSpec

ST = "sentence_transformers.models."
MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
           "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
           "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


@dataclass(frozen=True)
class SbertConfig(ExtractorConfig):
    text_batch: int = param(32, "texts per forward pass", spec=False, minimum=1)


def read_folder(folder: Path) -> dict[str, Any]:
    """The folder's modules: transformer path, pooling modes, normalize, max_seq_length, lowercasing."""
    def load(p: Path) -> Any:
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"{p}: unreadable ({exc})") from None

    mods = load(folder / "modules.json")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in mods]
    odd = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if odd or kinds[:2] != ["Transformer", "Pooling"]:
        raise ModelNotFoundError(f"{folder}/modules.json: sbert reads Transformer, Pooling[, Normalize] "
                                 f"folders; this one has {', '.join(kinds)}")
    tpath = folder / mods[0].get("path", "")
    cfg = load(tpath / "sentence_bert_config.json") if (tpath / "sentence_bert_config.json").exists() else {}
    pool = load(folder / mods[1]["path"] / "config.json")
    modes = pool.get("pooling_mode")
    if modes is None:
        modes = [m for k, m in _LEGACY.items() if pool.get(k)] or ["mean"]
    modes = [modes] if isinstance(modes, str) else list(modes)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ModelNotFoundError(f"{folder}: pooling mode {bad[0]!r} is not one of {', '.join(MODES)}")
    return {"transformer": tpath, "modes": [m for m in MODES if m in modes], "normalize": "Normalize" in kinds,
            "max_seq_length": cfg.get("max_seq_length"), "lower": bool(cfg.get("do_lower_case", False))}


def pool_rows(rows: np.ndarray, modes: list[str]) -> np.ndarray:
    """One text's token rows [T, D] -> its sentence vector, as sentence-transformers pools."""
    n = len(rows)
    parts = {"cls": rows[0], "max": rows.max(axis=0), "mean": rows.sum(axis=0) / n,
             "mean_sqrt_len_tokens": rows.sum(axis=0) / np.sqrt(n), "lasttoken": rows[-1]}
    if "weightedmean" in modes:
        w = np.arange(1, n + 1, dtype=np.float32)[:, None]
        parts["weightedmean"] = (rows * w).sum(axis=0) / w.sum()
    return np.concatenate([parts[m] for m in modes]).astype(np.float32)


@register
class SbertExtractor(TextFromManifestOrAsr, Extractor):
    """A sentence-transformers folder's sentence embedding, pooled as its own config says."""

    name = "sbert"
    family = "text"
    input = "text"
    Config = SbertConfig
    default_model = "sentence-transformers/all-mpnet-base-v2"
    format_version = 1
    output = "[tokens, D] token embeddings + pooled [D] sentence embedding"

    def __init__(self, model_dir: Path | None, config: SbertConfig | None = None, device: str = "cpu",
                 **params: Any) -> None:
        super().__init__(model_dir, config, device, **params)
        self.model: Any = None
        self.tokenizer: Any = None
        self.st: dict[str, Any] = {}

    def spec(self) -> FeatureSpec:
        st = read_folder(H.model_folder(self))
        return H.family_spec(self, {"modes": st["modes"], "normalize": st["normalize"],
                                    "max_seq_length": st["max_seq_length"], "lower": st["lower"],
                                    "text_source": self.text_source})

    def load(self) -> None:
        if self.model is not None:
            return
        st = read_folder(H.model_folder(self))
        self.model = H.load_model(st["transformer"], self.name, device=self.device, unused_pooler=True)
        self.tokenizer = H.load_processor(st["transformer"], self.name, "AutoTokenizer")
        self.st = st

    def unload(self) -> None:
        self.model = self.tokenizer = None

    def embed_texts(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        import torch

        self.load()
        st, out = self.st, []
        limit = st["max_seq_length"] or self.tokenizer.model_max_length
        for i in range(0, len(texts), self.config.text_batch):
            batch = [t.lower() if st["lower"] else t for t in texts[i:i + self.config.text_batch]]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=limit, return_tensors="pt")
            mask = enc["attention_mask"].numpy().astype(bool)
            with torch.inference_mode():
                h = H.to_numpy(self.model(**{k: v.to(self.model.device) for k, v in enc.items()}).last_hidden_state)
            for j in range(len(batch)):
                rows = h[j][mask[j]]
                vec = pool_rows(rows, st["modes"])
                if st["normalize"]:
                    vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
                out.append((rows, vec.astype(np.float32)))
        return out
