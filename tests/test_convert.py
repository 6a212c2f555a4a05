"""The converter's contract without torch: key mapping, head re-initialisation, clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_flax
from resnet_flax.io.convert import export_torchvision, load_torchvision, save_torchvision, torch_key
from resnet_flax.io.pth import write_pth, write_safetensors


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, np.ndarray]:
    model = resnet_flax.create_model("resnet18")
    variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))()
    return export_torchvision("resnet18", variables)


def test_torch_key_mapping() -> None:
    assert (
        torch_key("params", ("layer1_0", "downsample_0", "kernel"))
        == "layer1.0.downsample.0.weight"
    )
    assert torch_key("params", ("bn1", "scale")) == "bn1.weight"
    assert torch_key("batch_stats", ("layer4_1", "bn2", "var")) == "layer4.1.bn2.running_var"
    assert torch_key("params", ("classifier_6", "bias")) == "classifier.6.bias"


def test_export_has_torchvision_keys(resnet18_state) -> None:
    assert len(resnet18_state) == 122  # torchvision resnet18's state_dict has 122 entries
    assert resnet18_state["conv1.weight"].shape == (64, 3, 7, 7)
    assert resnet18_state["fc.weight"].shape == (1000, 512)
    assert resnet18_state["bn1.num_batches_tracked"].dtype == np.int64


def test_round_trip_through_files(resnet18_state, tmp_path) -> None:
    model, variables = load_torchvision("resnet18", resnet18_state)
    for suffix in ("pth", "safetensors"):
        path = tmp_path / f"w.{suffix}"
        save_torchvision(path, "resnet18", variables)
        _, again = load_torchvision("resnet18", path)
        back = export_torchvision("resnet18", again)
        for key, value in resnet18_state.items():
            np.testing.assert_array_equal(back[key], value, err_msg=f"{suffix}: {key}")


def test_new_head_when_num_classes_differs(resnet18_state) -> None:
    with pytest.warns(UserWarning, match="1000 classes.*num_classes=10.*re-initialised"):
        model, variables = load_torchvision("resnet18", resnet18_state, num_classes=10)
    assert model.num_classes == 10
    assert variables["params"]["fc"]["kernel"].shape == (512, 10)
    np.testing.assert_array_equal(
        variables["params"]["conv1"]["kernel"], resnet18_state["conv1.weight"].transpose(2, 3, 1, 0)
    )


def test_num_classes_defaults_to_the_files(resnet18_state) -> None:
    model, variables = load_torchvision("resnet18", resnet18_state)
    assert model.num_classes == 1000


def test_missing_unexpected_and_misshaped_keys(resnet18_state) -> None:
    broken = dict(resnet18_state)
    del broken["layer2.0.conv1.weight"]
    broken["extra.weight"] = np.zeros(3, np.float32)
    broken["layer1.0.bn1.running_mean"] = np.zeros(65, np.float32)
    with pytest.raises(ValueError) as err:
        load_torchvision("resnet18", broken)
    message = str(err.value)
    assert "1 missing keys:\n  'layer2.0.conv1.weight' (expected shape (128, 64, 3, 3))" in message
    assert "1 unexpected keys:\n  'extra.weight' with shape (3,)" in message
    assert "'layer1.0.bn1.running_mean' has shape (65,), the model expects (64,)" in message


def test_unexpected_keys_are_shown_beside_many_missing_ones(resnet18_state) -> None:
    renamed = {("head." + k if k.startswith("layer4") else k): v for k, v in resnet18_state.items()}
    with pytest.raises(ValueError) as err:
        load_torchvision("resnet18", renamed)
    message = str(err.value)
    assert "30 missing keys:" in message and "... 10 more" in message
    assert "30 unexpected keys:\n  'head.layer4.0.bn1.bias' with shape (512,)" in message


@pytest.mark.parametrize("prefix", ["model.", "module.", "backbone.", "module.model."])
def test_a_prefix_every_key_carries_is_stripped(resnet18_state, prefix) -> None:
    wrapped = {prefix + key: value for key, value in resnet18_state.items()}
    with pytest.warns(UserWarning, match=rf"every key starts with '{prefix}'.*without it"):
        _, variables = load_torchvision("resnet18", wrapped)
    np.testing.assert_array_equal(variables["params"]["fc"]["bias"], resnet18_state["fc.bias"])


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint8])
def test_integer_weights_are_refused(resnet18_state, tmp_path, dtype) -> None:
    """Cast to float they would be whole numbers (predict then gave 0.10% to every class)."""
    quantized = {
        key: value if key.endswith("num_batches_tracked") else value.astype(dtype)
        for key, value in resnet18_state.items()
    }
    for suffix, write in (("pth", write_pth), ("safetensors", write_safetensors)):
        path = tmp_path / f"int.{suffix}"
        write(path, quantized)
        message = rf"int.{suffix}: 102 floating-point parameters of resnet18 are not floating "
        message += "in the file "
        with pytest.raises(ValueError, match=message + rf"\('[\w.]+' is {np.dtype(dtype)}, "):
            load_torchvision("resnet18", path)


def test_wrong_architecture_is_named(resnet18_state) -> None:
    with pytest.raises(ValueError, match="do not fit resnet34"):
        load_torchvision("resnet34", resnet18_state)


@pytest.mark.parametrize(
    "name, family",
    [
        ("resnet50d", r"a ResNet with a deep stem \(timm's c, s, d and t variants\)"),
        ("resnet50t", r"a ResNet with a deep stem"),
        ("ecaresnet50d_pruned", r"a ResNet with a deep stem"),
        ("resnetv2_50x1_bit", r"timm's ResNetV2 \(pre-activation; BiT with GroupNorm"),
        ("resnetv2_50", r"timm's ResNetV2 \(pre-activation"),
        ("resnetv2_50d_evos", r"timm's ResNetV2"),
    ],
)
def test_a_timm_file_is_named_when_it_does_not_fit(name, family) -> None:
    """The error first says what the file looks like, then the key details."""
    model = resnet_flax.create_model(name, num_classes=21843)
    # only the keys and shapes matter here: zeros of the variables' shapes, no init compiled
    shapes = resnet_flax.models.registry.init_variables(model, abstract=True)
    state = export_torchvision(name, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes))
    with pytest.raises(
        ValueError, match=rf"do not fit resnet50 .*: they are {family}.*: try {name}: "
    ):
        load_torchvision("resnet50", state)
    model, _ = load_torchvision(name, state)  # its own name: the class count is the file's
    assert model.num_classes == 21843
