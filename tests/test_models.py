"""Architecture, registry and BatchNorm behaviour that needs no torch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_flax
from resnet_flax.models.layers import BatchNorm, adaptive_avg_pool
from resnet_flax.models.registry import count_parameters, init_variables


def n_params(name: str, **options) -> int:
    return count_parameters(resnet_flax.create_model(name, **options))


@pytest.mark.parametrize(
    "name, count",
    [  # He et al. 2016 Table 6 (0.27M .. 19.4M); kuangliu's CIFAR ResNet-18: 11,173,962
        ("resnet20", 269_722), ("resnet32", 464_154), ("resnet44", 658_586),
        ("resnet56", 853_018), ("resnet110", 1_727_962), ("resnet1202", 19_421_274),
        ("resnet18_cifar", 11_173_962), ("lenet5", 62_006),
    ],
)  # fmt: skip
def test_cifar_parameter_counts(name: str, count: int) -> None:
    assert n_params(name) == count


@pytest.mark.parametrize("name", resnet_flax.list_models())
def test_every_model_traces_at_32px(name: str) -> None:
    """Shapes only (abstract evaluation): every registered model takes 32x32 input."""
    model = resnet_flax.create_model(name, num_classes=7)
    out, _ = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.ones((2, 32, 32, 3)), train=True)
    )
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet18_cifar", "lenet5"])
def test_small_models_run(name: str) -> None:
    model = resnet_flax.create_model(name, num_classes=7)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    out, _ = jax.jit(lambda x: model.init_with_output(jax.random.key(0), x, train=True))(x)
    assert out.shape == (2, 7)
    assert np.isfinite(np.asarray(out)).all() and np.asarray(out).std() > 0


def test_unknown_model_and_option_suggest_close_matches() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet5'. Did you mean.*'resnet56'"):
        resnet_flax.create_model("resnet5")
    with pytest.raises(ValueError, match="unknown option 'num_class'.*Did you mean 'num_classes'"):
        resnet_flax.create_model("resnet18", num_class=10)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_non_positive_num_classes(bad) -> None:
    """Refused by create_model, and by a module built directly, at init."""
    with pytest.raises(ValueError, match="resnet20: num_classes must be a positive integer"):
        resnet_flax.create_model("resnet20", num_classes=bad)
    model = resnet_flax.models.resnet.ResNet(
        block=resnet_flax.models.resnet.BasicBlock, stage_sizes=(1, 1), num_classes=bad
    )
    with pytest.raises(ValueError, match="ResNet: num_classes must be a positive integer"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize(
    "shape, match",
    [
        ((32, 32, 3), "rank 4"),
        ((1, 32, 32, 1), "3 channels in the last axis"),
        ((1, 3, 32, 32), "NCHW input"),
    ],
)
def test_bad_input_shapes(shape, match) -> None:
    model = resnet_flax.create_model("resnet20")
    with pytest.raises(ValueError, match=match):
        model.init(jax.random.key(0), jnp.zeros(shape))


def test_image_too_small_or_wrong_size() -> None:
    with pytest.raises(ValueError, match="at least 32x32"):
        resnet_flax.create_model("vgg11").init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="takes 32x32 images; got 64x64"):
        resnet_flax.create_model("lenet5").init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def test_zero_init_residual_zeroes_last_bn() -> None:
    params = init_variables(resnet_flax.create_model("resnet20", zero_init_residual=True))["params"]
    assert not np.asarray(params["layer1_0"]["bn2"]["scale"]).any()
    assert np.asarray(params["layer1_0"]["bn1"]["scale"]).all()


def test_zero_init_residual_zeroes_resnetv2s_last_conv() -> None:
    """timm's zero_init_last in ResNetV2 zeroes conv3's kernel (off by default, as in timm)."""
    for zero in (False, True):
        model = resnet_flax.create_model("resnetv2_50x1_bit", zero_init_residual=zero)
        params = init_variables(model)
        block = params["params"]["stages_1"]["blocks_2"]
        assert np.asarray(block["conv3"]["kernel"]).any() != zero
        assert np.asarray(block["conv2"]["kernel"]).any()


def test_weight_standardisation() -> None:
    """A standardised conv sees each output channel's kernel at zero mean and unit variance:
    its output does not change when a channel's kernel is scaled and shifted; in bfloat16 the
    kernel is standardised in float32, then rounded once."""
    from resnet_flax.models.layers import StandardizedKernel, conv

    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 8))
    layer = conv(16, 3, standardize=1e-8, impl="plain")
    variables = layer.init(jax.random.key(1), x)
    kernel = variables["params"]["kernel"]
    a = jax.random.uniform(jax.random.key(2), (16,), minval=0.5, maxval=4.0)
    b = jax.random.normal(jax.random.key(3), (16,))
    moved = {"params": {"kernel": kernel * a + b}}
    out, ref = np.asarray(layer.apply(moved, x)), np.asarray(layer.apply(variables, x))
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()  # measured: 4e-6 (round-off)
    k = np.asarray(kernel, np.float64).reshape(-1, 16)
    expected = (k - k.mean(0)) / np.sqrt(k.var(0) + 1e-8)
    _, standardised, _ = StandardizedKernel(1e-8)(x, kernel, None, dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(standardised).reshape(-1, 16), expected, atol=1e-6)
    _, half, _ = StandardizedKernel(1e-8)(x, kernel, None, dtype=jnp.bfloat16)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_array_equal(half, standardised.astype(jnp.bfloat16))


@pytest.mark.parametrize("name", ["resnet50d", "resnetv2_50"])
def test_drop_path_rates_are_timms(name) -> None:
    """Each block's drop probability is the one timm gives it (linear from 0 to the rate)."""
    torch = pytest.importorskip("torch", reason="the reference is timm's")
    timm = pytest.importorskip("timm", reason="the reference is timm's")
    import flax.linen as nn

    with torch.device("meta"):
        theirs = [
            m.drop_path.drop_prob
            for m in timm.create_model(name, drop_path_rate=0.3).modules()
            if hasattr(m, "drop_path") and hasattr(m.drop_path, "drop_prob")
        ]
    ours = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(
            getattr(context.module, "drop_path", None), float
        ):
            ours.append(context.module.drop_path)
        return next_fun(*args, **kwargs)

    model = resnet_flax.create_model(name, drop_path_rate=0.3)
    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert len(ours) == 16 and ours[0] == 0.0  # timm gives a block of rate 0 no DropPath
    np.testing.assert_allclose(ours[1:], theirs, rtol=1e-6)


def test_dilation_keeps_resolution() -> None:
    model = resnet_flax.create_model("resnet50", replace_stride_with_dilation=(False, True, True))
    x = jnp.zeros((1, 64, 64, 3))
    _, state = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, mutable=True))
    assert state["intermediates"]["layer4"][0].shape == (1, 8, 8, 2048)  # output stride 8


def test_batchnorm_matches_torch_conventions() -> None:
    """Running var uses the unbiased variance; momentum 0.1 weights the new batch."""
    x = jax.random.normal(jax.random.key(0), (4, 3, 5, 2)) * 3 + 1
    bn = BatchNorm()
    variables = bn.init(jax.random.key(1), x, train=True)
    assert int(variables["batch_stats"]["num_batches_tracked"]) == 0  # init does not count
    y, updated = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    flat = np.asarray(x).reshape(-1, 2)
    stats = updated["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-6)
    assert int(stats["num_batches_tracked"]) == 1
    np.testing.assert_allclose(
        np.asarray(y).reshape(-1, 2), (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5), atol=1e-5
    )


def test_adaptive_avg_pool_matches_torch_bins() -> None:
    x = jnp.arange(2 * 10 * 9 * 1, dtype=jnp.float32).reshape(2, 10, 9, 1)
    out = np.asarray(adaptive_avg_pool(x, (7, 7)))
    # torch: bin i spans floor(i*H/7) .. ceil((i+1)*H/7)
    h0, h1 = (3 * 10) // 7, -((-4 * 10) // 7)
    w0, w1 = (5 * 9) // 7, -((-6 * 9) // 7)
    np.testing.assert_allclose(out[1, 3, 5, 0], np.asarray(x)[1, h0:h1, w0:w1, 0].mean(), rtol=1e-6)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("resnext50_32x4d", {"groups": 0}, r"groups must be a positive integer; got 0"),
        ("resnet50", {"replace_stride_with_dilation": (True,)}, r"None or 3 booleans"),
        ("resnet20", {"replace_stride_with_dilation": (True, False, False)}, r"None or 2 "),
        ("resnet18", {"dtype": "foo"}, r"dtype must be a floating-point dtype.*got 'foo'"),
        ("resnet18", {"dtype": "int32"}, r"dtype must be a floating-point dtype"),
        ("vgg11", {"dropout": 1.5}, r"dropout must be a probability in \[0, 1\); got 1.5"),
        ("resnet18", {"num_classes": 0}, r"num_classes must be a positive integer; got 0"),
        ("resnet18", {"width_per_group": True}, r"width_per_group must be a positive integer"),
        ("resnet18", {"num_classes": 10.5}, r"num_classes must be a positive integer"),
        ("resnet18", {"zero_init_residual": "no"}, r"zero_init_residual must be True or False"),
        ("resnetv2_50", {"zero_init_residual": 1}, r"zero_init_residual must be True or False"),
    ],
)
def test_create_model_names_the_bad_option(name, options, message):
    with pytest.raises(ValueError, match=rf"^{name}: .*{message}"):
        resnet_flax.create_model(name, **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stem": "tiered"}, r"stem must be one of .*not 'tiered'. Did you mean 'deep_tiered'"),
        ({"aa_layer": "blurr"}, r"aa_layer must be one of \(None, 'avg', 'blur'\).*'blur'\?"),
        ({"block_reduce_first": 0}, r"block_reduce_first must be a positive integer"),
    ],
)
def test_a_bad_choice_of_timms_options_is_named(options, message):
    with pytest.raises(ValueError, match=message):
        model = resnet_flax.create_model("resnet18", **options)
        jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 32, 32, 3)))


def test_anti_aliasing_on_an_odd_size_names_the_fix():
    """timm's average-pool anti-aliasing floors an odd size where the shortcut rounds up:
    timm's models fail there too; ours say which sizes work."""
    model = resnet_flax.create_model("resnetaa50d")
    with pytest.raises(ValueError, match=r"every stride-2 stage needs an even input size"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 99, 99, 3)))


def test_numpy_scalars_are_accepted_where_python_ones_are():
    model = resnet_flax.create_model(
        "resnet18", num_classes=np.int64(10), zero_init_residual=np.bool_(True)
    )
    assert model.num_classes == 10 and model.zero_init_residual


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int32, jnp.bool_])
def test_integer_images_are_an_error_naming_the_fix(dtype):
    model = resnet_flax.create_model("resnet18", num_classes=3)
    images = jnp.zeros((1, 32, 32, 3), dtype)
    with pytest.raises(
        ValueError, match=rf"normalised floating-point images; got {jnp.dtype(dtype)}"
    ):
        model.init(jax.random.key(0), images)


@pytest.mark.parametrize("name", ["resnet18d", "resnetv2_50"])
def test_drop_path_is_stochastic_depth_in_training_only(name):
    """timm's drop_path_rate: evaluation is untouched; training drops residual branches per
    example, drawn from the 'dropout' rng."""
    # zero_init_residual (timm's default) would zero every branch: nothing left to drop
    options = dict(num_classes=4, zero_init_residual=False)
    plain = resnet_flax.create_model(name, **options)
    dropping = resnet_flax.create_model(name, drop_path_rate=0.5, **options)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = init_variables(plain, seed=1)
    np.testing.assert_array_equal(plain.apply(variables, x), dropping.apply(variables, x))

    def train(key):
        logits, _ = dropping.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )
        return np.asarray(logits)

    np.testing.assert_array_equal(train(jax.random.key(2)), train(jax.random.key(2)))
    assert not np.allclose(train(jax.random.key(2)), train(jax.random.key(3)))
    undropped, _ = plain.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(train(jax.random.key(2)), undropped)
    with pytest.raises(ValueError, match="drop_path_rate must be a probability"):
        resnet_flax.create_model("resnet50d", drop_path_rate=1.0)
