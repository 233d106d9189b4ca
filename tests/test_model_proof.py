"""The weight proof every loader ends with: safe reading, tensors compared by value."""
from __future__ import annotations

import pickle

import pytest
import torch

from clmer_features.models import WeightsNotLoadedError, folder_state, load_state_safely, prove_loaded


class _Payload:
    """Unpickling this creates a file: the proof that the pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))


def test_pickled_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": _net().state_dict(), "extra": _Payload(marker)}, tmp_path / "model.pt")
    with pytest.raises(WeightsNotLoadedError, match="asks to run code while loading"):
        load_state_safely(tmp_path / "model.pt")
    assert not marker.exists()
    # a plain pickle (not torch's zip format) is refused the same way
    with open(tmp_path / "old.pt", "wb") as fh:
        pickle.dump({"w": _Payload(marker)}, fh, protocol=2)
    with pytest.raises(WeightsNotLoadedError, match=r"old\.pt"):
        load_state_safely(tmp_path / "old.pt")
    assert not marker.exists()


def test_state_is_unwrapped_and_module_prefix_dropped(tmp_path):
    net = _net()
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}, "step": 3}, tmp_path / "a.pt")
    state = load_state_safely(tmp_path / "a.pt")
    assert sorted(state) == sorted(net.state_dict())
    proof = prove_loaded(net, state, "toy", tmp_path)
    assert proof.compared == 4


def test_one_value_off_by_one_ulp_is_refused(tmp_path):
    from safetensors.torch import save_file

    net = _net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    assert prove_loaded(net, folder_state(tmp_path), "toy", tmp_path).compared == 4
    with torch.no_grad():
        net[0].weight[1, 2] = torch.nextafter(net[0].weight[1, 2], torch.tensor(10.0))
    with pytest.raises(WeightsNotLoadedError, match=r"toy: model folder .*: weights not loaded: 1 tensor\(s\) differ from the file: 0\.weight$"):
        prove_loaded(net, folder_state(tmp_path), "toy", tmp_path)


def test_missing_unused_and_allowed(tmp_path):
    net = _net()
    state = dict(net.state_dict())
    bias = state.pop("1.bias")
    with pytest.raises(WeightsNotLoadedError, match=r"1 model tensor\(s\) not in the checkpoint \(random weights\): 1\.bias"):
        prove_loaded(net, state, "toy", tmp_path)
    assert prove_loaded(net, state, "toy", tmp_path, allowed_missing=("*.bias",)).allowed_missing == ["1.bias"]
    state["1.bias"] = bias
    state["head.weight"] = torch.zeros(2)
    with pytest.raises(WeightsNotLoadedError, match=r"1 checkpoint tensor\(s\) the model does not use: head\.weight"):
        prove_loaded(net, state, "toy", tmp_path)
    assert prove_loaded(net, state, "toy", tmp_path, unused=("head.*",)).unused == 1


def test_tied_tensor_and_half_precision_cast(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(5, 3)
            self.out = torch.nn.Linear(3, 5, bias=False)
            self.out.weight = self.emb.weight

    m = Tied()
    state = {"emb.weight": m.emb.weight.detach().clone()}
    assert prove_loaded(m, state, "toy", tmp_path).tied == ["out.weight"]
    m.half()  # the loader's cast (fp16 on a GPU) is the only difference allowed
    assert prove_loaded(m, state, "toy", tmp_path).compared == 1


def test_transformers_names_prefix_and_legacy_layernorm(tmp_path):
    class Base(torch.nn.Module):
        base_model_prefix = "bert"

        def __init__(self):
            super().__init__()
            self.LayerNorm = torch.nn.LayerNorm(3)

    m = Base()
    state = {"bert.LayerNorm.gamma": m.LayerNorm.weight.detach().clone(),
             "bert.LayerNorm.beta": m.LayerNorm.bias.detach().clone()}
    assert prove_loaded(m, state, "toy", tmp_path).compared == 2


# --- every loader ends with the proof ---------------------------------------------
def _rename_one_tensor(folder, pick):
    """Rewrite the folder's model.safetensors with one tensor under another name:
    transformers then leaves that tensor at its random initialisation."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = load_file(str(path))
    key = next(k for k in state if pick in k)
    state[key.replace(pick, pick + "_renamed")] = state.pop(key)
    save_file(state, str(path), metadata={"format": "pt"})
    return key


def _siglip(tmp_path):
    from clmer_features.extractors.siglip import SiglipExtractor
    from clmer_features.testing import make_tiny_siglip

    return SiglipExtractor, make_tiny_siglip(tmp_path), "vision_model.encoder.layers.0.mlp.fc1.weight"


def _bert(tmp_path):
    from clmer_features.extractors.bert import BertExtractor
    from clmer_features.testing import make_tiny_bert

    return BertExtractor, make_tiny_bert(tmp_path), "encoder.layer.0.attention.self.query.weight"


def _asr(tmp_path):
    from clmer_features.extractors.asr import AsrExtractor
    from clmer_features.testing_audio import make_tiny_whisper

    return AsrExtractor, make_tiny_whisper(tmp_path / "whisper"), "model.decoder.layers.0.fc1.weight"


def _r1omni_vision(tmp_path):
    from clmer_features.extractors.r1omni import R1OmniVisionExtractor
    from clmer_fusion.r1omni.testing import build_tiny_r1omni

    return R1OmniVisionExtractor, build_tiny_r1omni(tmp_path).siglip_dir, "encoder.layers.1.mlp.fc2.weight"


def _r1omni_audio(tmp_path):
    from clmer_features.extractors.r1omni import R1OmniAudioExtractor
    from clmer_fusion.r1omni.testing import build_tiny_r1omni

    return R1OmniAudioExtractor, build_tiny_r1omni(tmp_path).whisper_dir, "model.encoder.layers.1.fc2.weight"


@pytest.mark.parametrize("make", [_siglip, _bert, _asr, _r1omni_vision, _r1omni_audio],
                         ids=["siglip", "bert", "asr", "r1omni_vision", "r1omni_audio"])
def test_loader_refuses_a_tensor_left_random(tmp_path, make):
    cls, folder, pick = make(tmp_path)
    cls(folder).load()  # the folder as written is proven
    _rename_one_tensor(folder, pick)
    with pytest.raises(WeightsNotLoadedError, match=rf"{cls.name}: model folder .*: weights not loaded: "
                                                    r"1 model tensor\(s\) not in the checkpoint \(random weights\)"):
        cls(folder).load()


def test_loader_refuses_values_that_differ_from_the_file(tmp_path, monkeypatch):
    """Names and shapes right, numbers not the file's (as when a loader casts or a
    conversion goes wrong): refused."""
    from transformers import BertModel

    cls, folder, _ = _bert(tmp_path)
    real = BertModel.from_pretrained.__func__

    def nudged(klass, *a, **k):
        model = real(klass, *a, **k)
        with torch.no_grad():
            model.encoder.layer[1].output.dense.bias.add_(1e-6)
        return model

    monkeypatch.setattr(BertModel, "from_pretrained", classmethod(nudged))
    with pytest.raises(WeightsNotLoadedError, match=r"differ from the file: encoder.layer.1.output.dense.bias"):
        cls(folder).load()


def test_faster_whisper_model_bin_must_be_ctranslate2(tmp_path):
    from clmer_features.extractors.asr import AsrExtractor
    from clmer_features.errors import ModelNotFoundError

    (tmp_path / "model.bin").write_bytes(pickle.dumps({"w": 1}, protocol=2))
    with pytest.raises(ModelNotFoundError, match="model.bin is not a CTranslate2 Whisper model"):
        AsrExtractor(tmp_path).load()


def test_transformers_bin_checkpoint_with_payload_is_refused_before_transformers(tmp_path):
    from safetensors.torch import load_file

    cls, folder, _ = _bert(tmp_path)
    marker = tmp_path / "payload-ran"
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save({**state, "extra": _Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(WeightsNotLoadedError, match="pytorch_model.bin asks to run code while loading"):
        cls(folder).load()
    assert not marker.exists()
    torch.save(state, folder / "pytorch_model.bin")  # the same tensors, no payload: loaded and proven
    cls(folder).load()
