"""transformers' ResNets: a ``save_pretrained`` folder loads with exactly transformers' logits
(eval and train mode), labels and class count from its config, and exports back to a folder
that ``ResNetForImageClassification.from_pretrained`` loads; configs one option away are built
exactly, the others refused naming the field. The hub repository-id route is in
``tests/test_hub.py``."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import resnet_flax
from resnet_flax.io import transformers_resnet as tr
from resnet_flax.models.registry import init_variables

torch = pytest.importorskip("torch", reason="needs torch: pip install -e '.[torch]'")
transformers = pytest.importorskip("transformers", reason="needs transformers: '.[torch]'")

SIZE = 35  # small and odd
_BASIC = dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512])
_BOTTLENECK = dict(
    layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048]
)


def _reference(folder, parity, seed: int = 0, **config):
    """transformers' model with random weights and BatchNorm state, saved to ``folder``."""
    labels = [f"class {i}" for i in range(7)]
    cfg = transformers.ResNetConfig(
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}, **config
    )
    torch.manual_seed(seed)
    model = transformers.ResNetForImageClassification(cfg).eval()
    parity.randomise_norms(model, seed)
    model.save_pretrained(folder)
    return model, labels


def _logits(model, x, parity, train: bool = False) -> np.ndarray:
    model.train(train)
    with torch.no_grad():
        return model(pixel_values=parity.nchw(x)).logits.numpy()


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("resnet18", _BASIC),
        ("resnet50", _BOTTLENECK),
        # one option away: v1's strided 1x1 (stride_in_1x1), a narrower stem (stem_width)
        ("resnet50", _BOTTLENECK | dict(downsample_in_bottleneck=True, embedding_size=32)),
    ],
)
def test_a_folder_loads_exactly_and_exports_back(tmp_path, parity, name, config) -> None:
    reference, labels = _reference(tmp_path / "theirs", parity, **config)
    theirs = {k: v.numpy().copy() for k, v in reference.state_dict().items()}
    model, variables = resnet_flax.load_pretrained(str(tmp_path / "theirs"))
    assert model.num_classes == 7 and tr.read_labels(tmp_path / "theirs") == labels
    assert tr.architecture(reference.config.to_dict())[0] == name
    x = np.random.default_rng(0).standard_normal((2, SIZE, SIZE, 3), dtype=np.float32)
    with jax.default_matmul_precision("highest"):
        err = parity.rel_err(np.asarray(model.apply(variables, x)), _logits(reference, x, parity))
        assert err <= parity.BOUND, f"eval logits: {err:.2e}"
        logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        ref = _logits(reference, x, parity, train=True)
        assert parity.rel_err(np.asarray(logits), ref) <= parity.BOUND

    options = {k: v for k, v in tr.architecture(reference.config.to_dict())[1].items()}
    del options["num_classes"]
    tr.save_transformers(tmp_path / "ours", name, variables, labels=labels, **options)
    back = transformers.ResNetForImageClassification.from_pretrained(tmp_path / "ours").eval()
    assert back.config.id2label[3] == "class 3"
    ours = {k: v.numpy() for k, v in back.state_dict().items()}
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("downsample_in_first_stage", True, "downsample_in_first_stage=true"),
        ("depths", [2, 2, 2], r"depths \[2, 2, 2\]: no registry ResNet"),
        ("hidden_act", "gelu", "hidden_act 'gelu'"),
        ("hidden_sizes", [250, 512, 1024, 2048], "hidden_sizes .* multiple of 4"),
    ],
)
def test_a_config_no_option_expresses_is_refused_naming_the_field(field, value, message) -> None:
    config = transformers.ResNetConfig(**_BOTTLENECK).to_dict() | {field: value}
    with pytest.raises(tr.TransformersConfigError, match=message):
        tr.architecture(config)


def test_a_folder_without_config_says_what_is_missing(tmp_path, parity) -> None:
    _reference(tmp_path, parity, **_BASIC)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no config.json: a transformers ResNet"):
        resnet_flax.load_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(_BASIC))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors or pytorch_model.bin"):
        resnet_flax.load_pretrained(str(tmp_path))


def test_models_transformers_cannot_hold_are_refused_on_export(tmp_path) -> None:
    variables = init_variables(resnet_flax.create_model("resnet50d"), 32)
    with pytest.raises(ValueError, match="transformers' ResNet has no stem='deep'"):
        tr.save_transformers(tmp_path, "resnet50d", variables)
