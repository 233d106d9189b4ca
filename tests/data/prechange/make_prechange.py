"""How tests/data/prechange was made: a store written by the code of main at 0fa17e5, before the
extractor contract (issue 12). Run from a checkout of that commit:

    python tests/data/prechange/make_prechange.py OUT

tests/test_extract_compat.py builds the same tiny models (same seeds, same bytes) and checks
that today's code reads this store and resumes it without recomputing anything.
"""
import os
import sys
from pathlib import Path

MTIME = 1_700_000_000_000_000_000  # the media files' mtime (part of the media fingerprint)
FEATURES = ["siglip", "emotion2vec", "asr", "bert", "r1omni_vision", "r1omni_audio"]
PARAMS = {"asr": {"beam_size": 1, "max_new_tokens": 4}}


def build_models(root: Path) -> dict[str, Path]:
    """The tiny models under ``root`` and the --model overrides of the r1omni towers."""
    from clmer_features import testing as T
    from clmer_features.testing_audio import make_tiny_emotion2vec, make_tiny_whisper
    from clmer_fusion.r1omni.testing import build_tiny_r1omni

    T.make_tiny_siglip(root)
    T.make_tiny_bert(root)
    make_tiny_emotion2vec(root / "emotion2vec/emotion2vec_base")
    make_tiny_whisper(root / "openai/whisper-large-v3-turbo")
    tiny = build_tiny_r1omni(root / "r1")
    return {"r1omni_vision": tiny.siglip_dir, "r1omni_audio": tiny.whisper_dir}


def main() -> None:
    from clmer_features import testing as T
    from clmer_features.engine import extract

    out = Path(sys.argv[1])
    media = out / "media"
    media.mkdir(parents=True, exist_ok=True)
    T.make_video(media / "av.mp4", 2.5, size=(64, 48), fps=5)
    T.make_wav(media / "tone.wav", 1.5)
    for p in media.iterdir():
        os.utime(p, ns=(MTIME, MTIME))
    T.write_manifest(out / "clips.csv", [
        {"clip_id": "av", "video": "media/av.mp4", "text": "hello happy day"},
        {"clip_id": "tone", "audio": "media/tone.wav"},
    ])
    overrides = build_models(out / "models")
    s = extract(out / "clips.csv", FEATURES, out / "cache", models_dir=out / "models", model_overrides=overrides,
                device="cpu", progress=False, params=PARAMS)
    print(s.format())


if __name__ == "__main__":
    main()
