"""Shared set-up for the R1-Omni tests: tiny models, tiny clips, a filled cache."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clmer_fusion.r1omni.testing import TinyR1Omni, build_tiny_r1omni

CLIPS = [  # clip_id, label, seconds, tone Hz, video pattern
    ("c0", "happy", 2.0, 440.0, "testsrc2"),
    ("c1", "sad", 3.0, 660.0, "testsrc"),
    ("c2", "fearful", 2.5, 220.0, "smptebars"),
]


@dataclass
class CachedSet:
    tiny: TinyR1Omni
    manifest: Path
    cache: Path
    videos: dict[str, Path]


def make_cached_set(root: Path, batch_size: int = 8) -> CachedSet:
    """Tiny R1-Omni + towers, three short videos with audio, both tower features extracted."""
    from clmer_features.engine import extract
    from clmer_features.testing import make_video, write_manifest

    tiny = build_tiny_r1omni(root / "models")
    rows, videos = [], {}
    for cid, label, seconds, freq, pattern in CLIPS:
        videos[cid] = make_video(root / "media" / f"{cid}.mp4", seconds, freq=freq, pattern=pattern)
        rows.append({"clip_id": cid, "video": str(videos[cid]), "label": label})
    manifest = write_manifest(root / "r1demo.csv", rows)
    summary = extract(
        manifest, ["r1omni_vision", "r1omni_audio"], root / "cache",
        model_overrides={"r1omni_vision": tiny.siglip_dir, "r1omni_audio": tiny.whisper_dir},
        device="cpu", batch_size=batch_size, progress=False, decode_workers=1,
    )
    for name, st in summary.features.items():
        assert st.done == len(CLIPS), f"{name}: extraction did not finish: {summary.format()}"
    return CachedSet(tiny=tiny, manifest=manifest, cache=root / "cache", videos=videos)


def decode_in_process(video: Path, clip_id: str, frame_request: object) -> object:
    """Decode one clip's frames and audio here (no decoder pool) into a DecodedClip."""
    from clmer_features.extractors.base import DecodedClip
    from clmer_features.media import DecodeJob, decode_clip

    res = decode_clip(DecodeJob(clip_id, str(video), None, None, (frame_request,), True))
    return DecodedClip(clip_id=clip_id, keys={}, row={}, frames=res.frames, audio=res.audio,
                       duration=res.duration, problems=dict(res.problems))
