"""Fixtures for the fusion tests: a small synthetic store written through the real store writer."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from clmer_fusion.synthetic import make_synthetic


def write_synthetic_store(
    folder: Path, n: int = 240, modalities: Sequence[str] = ("bert", "wav", "vis"), dim: int = 8,
    absent: dict[str, Sequence[int]] | None = None, seed: int = 0, frames: int = 4, sep: float = 4.0,
    media: bool = False, cache: str | Path | None = None,
) -> tuple[Path, Path, "object"]:
    """Manifest CSV + store under ``folder``; returns (manifest, cache_dir, FusionData truth).

    Every clip has ``frames`` rows per feature: the synthetic utterance vector plus small noise
    (so mean pooling gives the vector back up to the noise). ``absent[m]`` lists clip indices
    recorded as 'absent' for feature m. ``media``: each clip gets a small file ``media/<clip>.mp4``
    (bytes, never decoded) as its ``video``, and the features are keyed by the media fingerprints,
    as extracted features are. ``cache``: another cache root (e.g. ``s3://bucket/prefix``).
    """
    from clmer_features.manifest import read_manifest
    from clmer_features.spec import FeatureSpec
    from clmer_features.store import open_store

    truth = make_synthetic(n=n, modalities=modalities, dims=[dim] * len(modalities), sep=sep, seed=seed)
    meta = truth.meta
    manifest = folder / "synth.csv"
    cols = {}
    if media:
        (folder / "media").mkdir(parents=True, exist_ok=True)
        for cid in meta["clip_id"]:
            (folder / "media" / f"{cid}.mp4").write_bytes(f"not really a video: {cid}".encode())
        cols["video"] = [f"media/{cid}.mp4" for cid in meta["clip_id"]]
    pl.DataFrame({
        "clip_id": meta["clip_id"], **cols, "text": [f"utterance {i}" for i in range(n)],
        "label": meta["label"], "label_value": meta["label_value"], "split": meta["split"],
        "fold": meta["fold"], "language": meta["language"], "speaker": meta["speaker"],
    }).write_csv(manifest)
    man = read_manifest(manifest)
    cache = folder / "cache" if cache is None else cache
    store = open_store(cache, man.dataset, create=True)
    store.write_clips(man)
    keys = man.keys("media" if media else "text")
    rng = np.random.default_rng(seed + 1)
    for m in modalities:
        spec = FeatureSpec.create(m, extractor="synthetic", model_id="synthetic/none", params={"dim": dim, "tag": m})
        fw = store.feature_writer(spec, input="media" if media else "text")
        gone = set((absent or {}).get(m, ()))
        with fw.part("p0") as part:
            for i, (cid, key) in enumerate(zip(man.clip_ids, keys)):
                if i in gone:
                    part.fail(key, cid, "extract", "absent", f"no {m} for this clip", kind="absent")
                    continue
                noise = rng.normal(scale=0.01, size=(frames, dim))
                noise -= noise.mean(0)
                part.add(key, cid, (truth.x[m][i][None, :] + noise).astype(np.float32),
                         times=np.arange(frames, dtype=np.float32) * 2.0)
        fw.finalize()
    return manifest, cache, truth
