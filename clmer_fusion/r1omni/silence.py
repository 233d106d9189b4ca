"""The audio tower's output for 10 s of silence: what R1-Omni's official inference feeds a clip
without audio (``process_audio`` falls back to zeros, then the Whisper processor and the tower).

The cache records such a clip as 'absent' for ``r1omni_audio``; decoding it as the official code
does needs the tower's output of silence once per run. It is computed here from the Whisper folder
that made the cached feature: its weight digest must equal the one in the feature's spec, and the
loaded tensors are proven to be the folder's. The computation follows the ``r1omni_audio``
extractor (log-mels padded to 30 s, the encoder, average pooling with the spec's kernel, float16);
``tests/test_r1omni_pipeline.py`` checks it against that extractor on a silent clip.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clmer_features.errors import ClmerError

WHISPER_HEAD = ("projector.*", "classifier.*", "layer_weights")
WHISPER_DECODER = ("model.decoder.*", "decoder.*", "proj_out.*")


def silence_features(whisper_dir: str | Path, spec: Any, seconds: float = 10.0) -> np.ndarray:
    """``[rows, dim]`` float16: the ``r1omni_audio`` feature of ``seconds`` of silence."""
    import torch

    from clmer_features.models import folder_state, prove_loaded, quiet_transformers, weights_digest

    folder = Path(whisper_dir)
    if not folder.is_dir():
        raise ClmerError(f"--audio-tower {folder}: no such folder")
    digest = weights_digest(folder)
    if spec.weights_digest and digest != spec.weights_digest:
        raise ClmerError(f"--audio-tower {folder}: its weights (digest {digest[:12]}) are not the ones that made "
                         f"{spec.feature}/{spec.spec_id} (digest {spec.weights_digest[:12]})")
    params = spec.params
    rate, kernel = int(params.get("sample_rate", 16000)), int(params.get("pool_kernel", 3))
    stride = int(params.get("pool_stride", kernel))
    quiet_transformers()
    from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

    state = folder_state(folder)
    fe = WhisperFeatureExtractor.from_pretrained(str(folder))
    model = WhisperForAudioClassification.from_pretrained(str(folder), dtype=torch.float32).eval()
    prove_loaded(model, state, "r1omni_audio (silence)", folder, allowed_missing=WHISPER_HEAD, unused=WHISPER_DECODER)
    feats = fe([np.zeros(int(seconds * rate), np.float32)], sampling_rate=rate, return_tensors="pt",
               padding="max_length", truncation=True)["input_features"]
    with torch.no_grad():
        hidden = model.encoder(feats).last_hidden_state
        pooled = torch.nn.functional.avg_pool1d(hidden.transpose(1, 2), kernel_size=kernel, stride=stride)
    out = pooled.transpose(1, 2)[0].float().numpy().astype(np.float16)
    want = tuple(params.get("shape", out.shape))
    if out.shape != want:
        raise ClmerError(f"--audio-tower {folder}: silence gives {out.shape}, the cached feature is {want}")
    return out
