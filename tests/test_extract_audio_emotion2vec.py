"""emotion2vec extractor: fidelity with funasr's own generate, windows, refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clmer_features.errors import ModelNotFoundError, ParameterError
from clmer_features.extractors import ClipOutput, get_extractor
from clmer_features.extractors.emotion2vec import Emotion2vecExtractor, NoAudioError, window_bounds
from clmer_features.models import WeightsNotLoadedError
from clmer_features.testing_audio import audio_clip, make_tiny_emotion2vec, speak

SR = 16000


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_emotion2vec(tmp_path_factory.mktemp("models") / "emotion2vec" / "tiny")


@pytest.fixture(scope="module")
def extractor(tiny_dir):
    ex = Emotion2vecExtractor(tiny_dir)
    ex.load()
    return ex


@pytest.fixture(scope="module")
def speech():
    return speak("I am so angry that you forgot my birthday again.")


def _funasr_generate(extractor, audio, granularity):
    res = extractor._auto.generate(audio, granularity=granularity, extract_embedding=True, disable_pbar=True)
    return np.asarray(res[0]["feats"])


def test_registered_and_spec(tiny_dir):
    assert get_extractor("emotion2vec") is Emotion2vecExtractor
    a = Emotion2vecExtractor(tiny_dir).spec()
    assert a.model_id == "clmer-testing/tiny-emotion2vec"
    assert len(a.weights_digest) == 64
    assert a.params["window_seconds"] == 30.0
    b = Emotion2vecExtractor(tiny_dir, device="cuda", window_seconds=10).spec()
    assert b.spec_id != a.spec_id and any("window_seconds" in d for d in a.diff(b))
    assert Emotion2vecExtractor(tiny_dir, device="cuda").spec().spec_id == a.spec_id


def test_frames_and_utterance_equal_funasr_generate(extractor, speech):
    out = extractor.extract([audio_clip("a", speech)])[0]
    assert isinstance(out, ClipOutput)
    frames = _funasr_generate(extractor, speech, "frame")
    utt = _funasr_generate(extractor, speech, "utterance")
    assert out.values.shape == frames.shape == (len(speech) // 320 - (1 if len(speech) % 320 < 80 else 0), 32)
    np.testing.assert_array_equal(out.values, frames)
    np.testing.assert_array_equal(out.pooled, utt)
    assert out.times.shape == (frames.shape[0],)
    np.testing.assert_allclose(np.diff(out.times), 0.02, atol=1e-6)
    assert out.times[0] == 0.0 and out.record is None


def test_long_audio_runs_in_windows_each_equal_to_generate(tiny_dir, speech):
    ex = Emotion2vecExtractor(tiny_dir, window_seconds=1.0)
    ex.load()
    audio = np.concatenate([speech, speech])[: int(2.5 * SR)]
    bounds = window_bounds(len(audio), SR)
    assert len(bounds) == 3 and all(a % 320 == 0 for a, _ in bounds)
    out = ex.extract([audio_clip("long", audio)])[0]
    parts = [_funasr_generate(ex, audio[a:b], "frame") for a, b in bounds]
    np.testing.assert_array_equal(out.values, np.concatenate(parts))
    starts = np.concatenate([(a + 320 * np.arange(len(p))) / SR for (a, _), p in zip(bounds, parts)])
    np.testing.assert_allclose(out.times, starts, atol=1e-6)
    np.testing.assert_allclose(out.pooled, out.values.mean(0), rtol=1e-6)
    # the 30 s default keeps this clip in one window: different numbers than windows of 1 s
    whole = Emotion2vecExtractor(tiny_dir)
    whole._auto, whole._model = ex._auto, ex._model
    assert not np.allclose(whole.extract([audio_clip("long", audio)])[0].values[:40], out.values[:40])


def test_window_bounds_are_equal_and_cover_everything():
    assert window_bounds(1000, 5000) == [(0, 1000)]
    b = window_bounds(65 * SR, 30 * SR)
    assert len(b) == 3 and b[0][0] == 0 and b[-1][1] == 65 * SR
    assert all(x[1] == y[0] for x, y in zip(b, b[1:]))
    lengths = [e - s for s, e in b]
    assert max(lengths) <= 30 * SR and max(lengths) - min(lengths) <= 640


def test_bad_clips_fail_alone(extractor, speech):
    clips = [
        audio_clip("ok", speech[: SR]),
        audio_clip("none", None, problems={"audio": ("absent", "video has no audio stream")}),
        audio_clip("tiny", np.zeros(200, np.float32)),
        audio_clip("nan", np.full(SR, np.nan, np.float32)),
        audio_clip("short", speech[: int(0.3 * SR)]),
    ]
    out = extractor.extract(clips)
    assert isinstance(out[0], ClipOutput) and out[0].values.shape == (49, 32)
    assert isinstance(out[1], NoAudioError) and "no audio stream" in str(out[1])
    assert isinstance(out[2], ValueError) and "too short" in str(out[2])
    assert isinstance(out[3], ValueError) and "NaN" in str(out[3])
    assert isinstance(out[4], ClipOutput) and out[4].values.shape == (14, 32)


def test_missing_folder_refused_before_funasr(tmp_path, monkeypatch):
    import funasr

    def boom(*a, **k):
        raise AssertionError("funasr must not be reached")

    monkeypatch.setattr(funasr, "AutoModel", boom)
    missing = tmp_path / "emotion2vec" / "emotion2vec_base"
    with pytest.raises(ModelNotFoundError, match=str(missing)):
        Emotion2vecExtractor(missing).load()
    missing.mkdir(parents=True)
    with pytest.raises(ModelNotFoundError, match="lacks config.yaml"):
        Emotion2vecExtractor(missing).spec()
    (missing / "config.yaml").write_text("model: Emotion2vec\n")
    with pytest.raises(ModelNotFoundError, match="lacks model.pt"):
        Emotion2vecExtractor(missing).load()
    (missing / "model.pt").write_bytes(b"")
    (missing / "config.yaml").write_text("model: Paraformer\n")
    with pytest.raises(ModelNotFoundError, match="builds 'Paraformer', not Emotion2vec"):
        Emotion2vecExtractor(missing).load()


@pytest.mark.parametrize("change", ["drop", "extra", "shape"])
def test_checkpoint_mismatch_refused(tiny_dir, tmp_path, change):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    ckpt = torch.load(bad / "model.pt", weights_only=True)
    state = ckpt["model"]
    if change == "drop":
        del state["blocks.0.attn.qkv.weight"]
        expect = r"1 model tensor\(s\) not in the checkpoint \(random weights\): blocks.0.attn.qkv.weight"
    elif change == "extra":
        state["head.weight"] = torch.zeros(3)
        expect = r"1 checkpoint tensor\(s\) the model does not use: head.weight"
    else:
        state["blocks.1.mlp.fc1.bias"] = torch.zeros(7)
        expect = r"blocks.1.mlp.fc1.bias \(shape \(128,\) != file \(7,\)\)"
    torch.save(ckpt, bad / "model.pt")
    with pytest.raises(WeightsNotLoadedError, match="emotion2vec: model folder .*: weights not loaded: .*" + expect):
        Emotion2vecExtractor(bad).load()


def test_ema_teacher_tensors_are_not_a_mismatch(tiny_dir, tmp_path):
    import shutil

    ok = tmp_path / "ok"
    shutil.copytree(tiny_dir, ok)
    ckpt = torch.load(ok / "model.pt", weights_only=True)
    ckpt["model"]["_ema.blocks.0.attn.qkv.weight"] = torch.zeros(2)
    ckpt["model"] = {f"module.{k}": v for k, v in ckpt["model"].items()}  # DDP-style names
    torch.save(ckpt, ok / "model.pt")
    ex = Emotion2vecExtractor(ok)
    ex.load()
    ref = Emotion2vecExtractor(tiny_dir)
    audio = np.random.default_rng(0).normal(0, 0.1, SR).astype(np.float32)
    np.testing.assert_array_equal(ex.embed(audio).values, ref.embed(audio).values)


def _without_init_param(src, dst):
    """A copy of the folder whose configuration.json does not name model.pt (funasr then
    never loads it), as many hand-made or older folders are."""
    import json
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / "configuration.json").read_text())
    del meta["file_path_metas"]["init_param"]
    (dst / "configuration.json").write_text(json.dumps(meta))
    return dst


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling creates the marker file
        return (open, (self.marker, "w"))


def test_pickled_payload_in_model_pt_is_refused_and_never_runs(tiny_dir, tmp_path):
    bad = _without_init_param(tiny_dir, tmp_path / "bad")
    marker = tmp_path / "payload-ran"
    ckpt = torch.load(bad / "model.pt", weights_only=True)
    ckpt["extra"] = _Payload(marker)
    torch.save(ckpt, bad / "model.pt")
    with pytest.raises(WeightsNotLoadedError, match="model.pt asks to run code while loading"):
        Emotion2vecExtractor(bad).load()
    assert not marker.exists()


def test_weights_are_loaded_when_funasr_would_not(tiny_dir, tmp_path):
    """configuration.json without init_param: funasr builds a seeded random model;
    the features must still be model.pt's (halving every weight changes them)."""
    plain = _without_init_param(tiny_dir, tmp_path / "plain")
    half = _without_init_param(tiny_dir, tmp_path / "half")
    ckpt = torch.load(half / "model.pt", weights_only=True)
    ckpt["model"] = {k: v / 2 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, half / "model.pt")
    audio = np.random.default_rng(1).normal(0, 0.1, SR).astype(np.float32)
    ref = Emotion2vecExtractor(tiny_dir).embed(audio).values
    np.testing.assert_array_equal(Emotion2vecExtractor(plain).embed(audio).values, ref)
    assert np.abs(Emotion2vecExtractor(half).embed(audio).values - ref).max() > 1e-3


def test_init_param_naming_another_file_is_refused(tiny_dir, tmp_path):
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    meta = json.loads((other / "configuration.json").read_text())
    meta["file_path_metas"]["init_param"] = "elsewhere.pt"
    (other / "configuration.json").write_text(json.dumps(meta))
    with pytest.raises(ModelNotFoundError, match="configuration.json names init_param 'elsewhere.pt'"):
        Emotion2vecExtractor(other).load()


def test_importing_funasr_leaves_the_root_logger_alone():
    import logging
    import subprocess
    import sys

    code = (
        "import logging, numpy as np\n"
        "from clmer_features.testing_audio import make_tiny_emotion2vec\n"
        "from clmer_features.extractors.emotion2vec import Emotion2vecExtractor\n"
        "import tempfile, pathlib\n"
        "d = make_tiny_emotion2vec(pathlib.Path(tempfile.mkdtemp()) / 'e2v')\n"
        "ex = Emotion2vecExtractor(d); ex.load()\n"
        "ex.embed(np.zeros(16000, np.float32))\n"
        "print(len(logging.getLogger().handlers), logging.getLogger().level)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["0", str(logging.WARNING)]
    assert "[INFO]" not in res.stderr and "funasr version" not in res.stdout
    assert "trust_remote_code" not in res.stderr + res.stdout


def test_loading_leaves_the_process_alone(tiny_dir, capsys):
    import logging
    import random

    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    want = (np.random.rand(), random.random(), torch.rand(1).item())
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    handlers = list(logging.getLogger().handlers)
    threads = torch.get_num_threads()
    Emotion2vecExtractor(tiny_dir).load()  # funasr reseeds, configures logging, prints
    assert (np.random.rand(), random.random(), torch.rand(1).item()) == want
    assert logging.getLogger().handlers == handlers and torch.get_num_threads() == threads
    assert "funasr" not in capsys.readouterr().out


def test_unknown_parameter_refused(tiny_dir):
    with pytest.raises(ParameterError, match="emotion2vec: unknown parameter 'granularity'"):
        Emotion2vecExtractor(tiny_dir, granularity="frame")
    with pytest.raises(ParameterError, match="emotion2vec.window_seconds: expected a number >= 1"):
        Emotion2vecExtractor(tiny_dir, window_seconds=0.5)
