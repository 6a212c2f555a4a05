"""The CPU paths behind the one conv factory, the one norm and max pooling, and the compiler
settings: the same numbers as the plain formulations.

``impl="cpu"`` (the trainer's choice on a CPU) runs convs through oneDNN (or, without it, XLA
with a chunked kernel gradient) and gives BatchNorm and max pooling hand-written gradients, so
each is checked against torch's autograd, next to the textbook ``impl="plain"``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_flax.cpu import onednn
from resnet_flax.cpu.kernels import WEIGHT_GRAD_CHUNK
from resnet_flax.models.layers import BatchNorm, compiler_options, conv, max_pool

SHAPE = (8, 6, 5, 16)  # NHWC
BOUND = 1e-6  # measured worst relative error against torch, either impl: 3.3e-7 (dscale)
# measured worst: 1.1e-6, the kernel gradient of plain XLA (3x3, stride 1: sums of 3,240
# products); the chunked "cpu" gradient is as close or closer in every case (<= 9.7e-7)
CONV_BOUND = 3e-6


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(SHAPE) * 3 + 1).astype(np.float32)
    dy = rng.standard_normal(SHAPE).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, SHAPE[-1]).astype(np.float32)
    bias = rng.standard_normal(SHAPE[-1]).astype(np.float32)
    return x, dy, scale, bias


def flax_train_step(impl: str, x, dy, scale, bias):
    """Output, gradients (x, scale, bias) and new running stats of one train-mode call."""
    bn = BatchNorm(impl=impl)
    stats = bn.init(jax.random.key(0), x, train=True)["batch_stats"]

    def loss(x, params):
        y, updates = bn.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(y * dy), (y, updates["batch_stats"])

    params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
    (_, (y, new_stats)), (dx, dparams) = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    )(jnp.asarray(x), params)
    return y, dx, dparams["scale"], dparams["bias"], new_stats


@pytest.mark.parametrize("impl", ["plain", "cpu"])
def test_batch_norm_forward_and_backward_match_torch(impl):
    torch = pytest.importorskip("torch")
    x, dy, scale, bias = inputs()
    bn = torch.nn.BatchNorm2d(SHAPE[-1]).train()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(scale))
        bn.bias.copy_(torch.from_numpy(bias))
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    ty = bn(tx)
    ty.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    nhwc = lambda t: t.detach().numpy().transpose(0, 2, 3, 1)  # noqa: E731

    y, dx, dscale, dbias, stats = flax_train_step(impl, x, dy, scale, bias)
    assert rel(y, nhwc(ty)) <= BOUND
    assert rel(dx, nhwc(tx.grad)) <= BOUND
    assert rel(dscale, bn.weight.grad.numpy()) <= BOUND
    assert rel(dbias, bn.bias.grad.numpy()) <= BOUND
    assert rel(stats["mean"], bn.running_mean.numpy()) <= BOUND
    assert rel(stats["var"], bn.running_var.numpy()) <= BOUND
    assert int(stats["num_batches_tracked"]) == 1


def test_cpu_batch_norm_gradients_in_bfloat16_stay_near_float32():
    """bf16 activations: the hand-written VJP accumulates in float32 (measured error against
    the float32 gradient 2.4e-3; the plain version through bf16 autodiff: 2.0e-2)."""
    x, dy, _, _ = inputs(1)
    x16 = jnp.asarray(x, jnp.bfloat16)
    grads = {}
    for impl, dtype in (("cpu", jnp.bfloat16), ("plain", jnp.float32)):
        bn = BatchNorm(impl=impl, dtype=dtype)
        variables = bn.init(jax.random.key(0), x, train=True)

        def f(params, x, bn=bn, stats=variables["batch_stats"]):
            v = {"params": params, "batch_stats": stats}
            y = bn.apply(v, x, train=True, mutable=["batch_stats"])[0]
            return jnp.sum(y.astype(jnp.float32) * dy)

        grads[impl] = jax.grad(f, argnums=(0, 1))(variables["params"], x16.astype(dtype))
    for a, b in zip(jax.tree.leaves(grads["cpu"]), jax.tree.leaves(grads["plain"]), strict=True):
        assert rel(np.asarray(a, np.float32), b) <= 5e-3


@pytest.mark.parametrize("impl", ["plain", "cpu"])
def test_synced_batch_statistics_combine_devices_exactly(impl):
    """Eight devices (a vmap with an axis name: the same collectives), a channel whose mean is
    large against its spread, and means that differ per device: the synced statistics are the
    whole batch's, as float64 computes them. Averaging E[x^2] over devices cancelled here:
    the variance of the first channel came out 0 (relative error 1)."""
    rng = np.random.default_rng(0)
    shift = np.array([1e4, 0.0, -50.0])
    x = rng.standard_normal((8, 4, 5, 5, 3)) + shift + rng.standard_normal((8, 1, 1, 1, 3))
    x = x.astype(np.float32)
    norm = BatchNorm(axis_name="batch", impl=impl, momentum=1.0)  # running stats := batch's
    variables = norm.init(jax.random.key(0), x[0], train=False)

    def stats(xs):
        _, new = norm.apply(variables, xs, train=True, mutable=["batch_stats"])
        return new["batch_stats"]

    got = jax.vmap(stats, axis_name="batch")(jnp.asarray(x))
    whole = x.astype(np.float64).reshape(-1, 3)
    count = whole.shape[0]
    unbiased = whole.var(0) * count / (count - 1)  # running_var is unbiased, as torch's
    assert rel(got["mean"][0], whole.mean(0)) <= 1e-6
    # measured 3.9e-5 (one device: 1.1e-6): each device's mean, a float32 near 1e4, is only
    # good to 5e-4, and the variance of the means inherits that; torch's SyncBatchNorm too
    assert rel(got["var"][0], unbiased) <= 1e-4


@pytest.mark.parametrize("impl", ["plain", "cpu"])
def test_training_batch_norm_on_one_value_per_channel_is_refused(impl):
    """torch raises "Expected more than 1 value per channel when training"; so do we, at trace
    time, naming the layer (resnet18 at batch 1 and 32x32: layer4 is 1x1)."""
    from resnet_flax import create_model

    model = create_model("resnet18", num_classes=10, impl=impl)
    x = jnp.ones((1, 32, 32, 3))
    variables = model.init(jax.random.key(0), x, train=True)  # initialising computes nothing
    with pytest.raises(ValueError, match=r"BatchNorm 'layer4_0/bn1'.*batch_size"):
        model.apply(variables, x, train=True, mutable=["batch_stats"])
    model.apply(variables, jnp.ones((2, 32, 32, 3)), train=True, mutable=["batch_stats"])
    model.apply(variables, x, train=False)


def test_batch_norm_rejects_an_unknown_impl():
    with pytest.raises(ValueError, match="'plain', 'cpu' or 'auto'"):
        BatchNorm(impl="fast").init(jax.random.key(0), jnp.ones(SHAPE), train=True)


@pytest.mark.parametrize("impl", ["plain", "cpu", "cpu-without-onednn"])
@pytest.mark.parametrize(
    "kernel,stride,groups,dilation", [(3, 1, 1, 1), (3, 2, 2, 1), (1, 2, 1, 1), (3, 1, 1, 2)]
)
def test_conv_gradients_match_torch(impl, kernel, stride, groups, dilation, monkeypatch):
    """40 images: two full weight-gradient chunks and a part chunk (for XLA's chunked kernel
    gradient, the CPU path where oneDNN is missing)."""
    torch = pytest.importorskip("torch")
    if impl == "cpu-without-onednn":
        monkeypatch.setattr(onednn, "available", lambda: False)
        impl = "cpu"
    n = 2 * WEIGHT_GRAD_CHUNK + 8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 9, 9, 8)).astype(np.float32)
    layer = conv(12, kernel, stride, groups=groups, dilation=dilation, impl=impl)
    params = layer.init(jax.random.key(0), jnp.asarray(x))["params"]
    y_shape = jax.eval_shape(lambda p: layer.apply({"params": p}, jnp.asarray(x)), params).shape
    dy = rng.standard_normal(y_shape).astype(np.float32)

    def f(x, params):
        return jnp.sum(layer.apply({"params": params}, x) * dy)

    dx, dparams = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(x), params)

    pad = dilation * (kernel - 1) // 2
    tconv = torch.nn.Conv2d(8, 12, kernel, stride, pad, dilation, groups, bias=False)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(np.array(params["kernel"]).transpose(3, 2, 0, 1)))
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    tconv(tx).backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    assert rel(dx, tx.grad.numpy().transpose(0, 2, 3, 1)) <= CONV_BOUND
    assert rel(dparams["kernel"], tconv.weight.grad.numpy().transpose(2, 3, 1, 0)) <= CONV_BOUND


def test_compiler_options_come_with_the_cpu_kernels_and_keep_the_numbers():
    """The CPU settings apply where the CPU kernels run (plain XLA compiles with XLA's
    defaults), and they change kernels, not results: a conv's value and gradient agree."""
    assert "xla_cpu_experimental_ynn_fusion_type" in compiler_options("cpu")
    assert compiler_options("auto") == compiler_options("cpu")  # on this CPU
    assert compiler_options("plain") is None
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 12, 12, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 8, 8)), jnp.float32)

    def f(x, w):
        dn = ("NHWC", "HWIO", "NHWC")
        y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
        return jnp.sum(jnp.square(y))

    fast = jax.jit(jax.value_and_grad(f, argnums=(0, 1)), compiler_options=compiler_options("cpu"))
    plain = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    fast, plain = fast(x, w), plain(x, w)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        assert rel(a, b) <= 1e-6


@pytest.mark.parametrize("impl", ["plain", "cpu"])
@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 1), (2, 2, 0), (3, 1, 1)])
def test_max_pool_value_and_gradient_match_torch_with_ties(kernel, stride, padding, impl):
    """Small integers after a ReLU make most windows hold tied maxima (many all-zero): the
    gradient must go to the first one, as torch's does, with either formulation."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(kernel * 10 + padding)
    x = np.maximum(rng.integers(-3, 3, (3, 11, 10, 5)), 0).astype(np.float32)
    pool = jax.jit(lambda x: max_pool(x, kernel, stride, padding, impl=impl))
    y, vjp = jax.vjp(pool, jnp.asarray(x))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    (dx,) = vjp(jnp.asarray(dy))
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    ty = torch.nn.functional.max_pool2d(tx, kernel, stride, padding)
    ty.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_array_equal(np.asarray(y), ty.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(dx), tx.grad.numpy().transpose(0, 2, 3, 1))
