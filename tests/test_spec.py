import json
import subprocess
import sys

import pytest

from clmer_features.spec import FeatureSpec


def make(**params):
    return FeatureSpec.create("siglip", model_id="google/siglip-base-patch16-224", weights_digest="ab" * 32, params=params)


def test_spec_id_ignores_param_order_and_is_short_hex():
    a = make(interval=2.0, image_size=224)
    b = make(image_size=224, interval=2.0)
    assert a.spec_id == b.spec_id
    assert len(a.spec_id) == 12 and int(a.spec_id, 16) >= 0


@pytest.mark.parametrize("key", ["batch_size", "device", "path", "models_dir", "num_workers"])
def test_run_settings_are_refused(key):
    with pytest.raises(ValueError, match=key):
        make(interval=2.0, **{key: 8})


@pytest.mark.parametrize(
    "change",
    [
        dict(params={"interval": 1.0, "image_size": 224}),
        dict(params={"interval": 2.0, "image_size": 384}),
        dict(params={"interval": 2.0, "image_size": 224, "dtype": "float32"}),
        dict(weights_digest="cd" * 32),
        dict(model_id="google/siglip-large-patch16-384"),
        dict(format_version=2),
    ],
)
def test_anything_that_changes_numbers_changes_the_id(change):
    base = dict(model_id="google/siglip-base-patch16-224", weights_digest="ab" * 32, params={"interval": 2.0, "image_size": 224})
    a = FeatureSpec.create("siglip", **base)
    b = FeatureSpec.create("siglip", **{**base, **change})
    assert a.spec_id != b.spec_id
    assert a.diff(b)


def test_int_and_float_params_differ():
    assert make(interval=2).spec_id != make(interval=2.0).spec_id


def test_round_trip_through_dict_and_json():
    a = make(interval=2.0, layers=[-2], pool={"kind": "mean"})
    b = FeatureSpec.from_dict(json.loads(json.dumps(a.to_dict())))
    assert a == b and a.spec_id == b.spec_id


def test_live_objects_are_refused():
    with pytest.raises(TypeError):
        make(tokenizer=object())
    with pytest.raises(ValueError):
        make(scale=float("nan"))


def test_spec_id_is_stable_across_processes_and_folders(tmp_path):
    code = (
        "from clmer_features.spec import FeatureSpec;"
        "print(FeatureSpec.create('siglip', model_id='m', weights_digest='d', params={'interval': 2.0, 'image_size': 224}).spec_id)"
    )
    ids = {subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
           for cwd in (tmp_path, "/")}
    here = FeatureSpec.create("siglip", model_id="m", weights_digest="d", params={"interval": 2.0, "image_size": 224}).spec_id
    assert ids == {here}
