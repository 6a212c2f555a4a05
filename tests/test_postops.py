"""Each conv's bias, residual sum and ReLU run by the oneDNN conv in the folded eval path."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_flax import create_model, fold_batch_norm
from resnet_flax.cpu import onednn
from resnet_flax.cpu.postops import plan

pytestmark = pytest.mark.skipif(not onednn.available(), reason="oneDNN is not installed")


def forward_calls(predict, x) -> collections.Counter:
    """How many oneDNN forward calls ``predict`` (a fold_batch_norm result) makes, by their
    post-ops."""
    calls = collections.Counter()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "ffi_call" and eqn.params["target_name"] == onednn.target(
                "fwd"
            ):
                geometry = dict(eqn.params["attributes"])["geometry"].val
                g = dict(zip(onednn.FIELDS, geometry, strict=True))
                calls["+".join(p for p in ("bias", "sum", "relu") if g[p]) or "-"] += 1
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(predict.func.trace(*predict.args, x).jaxpr.jaxpr)  # the jitted program, as traced
    return calls


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [
        # stem and each block's conv1: + ReLU; conv2: + shortcut + ReLU; projections: bias only
        ("resnet18_cifar", 32, {"bias+relu": 9, "bias+sum+relu": 8, "bias": 3}),
        ("resnet50", 64, {"bias+relu": 33, "bias+sum+relu": 16, "bias": 4}),
        ("vgg11_bn", 32, {"bias+relu": 8}),  # VGG's convs carry their own (folded) bias
        # each block's conv1 -> bn2 -> ReLU: folded and fused; the stem conv -> layer1_0's bn1:
        # folded, but its output is also the block's identity, so the ReLU stays apart; conv2
        # and the projections feed sums without a bias: left as they are
        ("preact_resnet18_cifar", 32, {"bias+relu": 8, "bias": 1, "-": 11}),
    ],
)
def test_folded_eval_fuses_conv_tails_and_keeps_the_numbers(name, size, expected):
    model = create_model(name, num_classes=10, impl="cpu")
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)
    fused = fold_batch_norm(model, variables, x.shape, post_ops=True)
    unfused = fold_batch_norm(model, variables, x.shape)
    assert forward_calls(fused, x) == expected
    assert set(forward_calls(unfused, x)) <= {"-"}
    np.testing.assert_array_equal(fused(x), unfused(x))  # same operations, same order


def test_a_value_used_twice_ends_the_chain():
    """The conv + bias is also returned, so the ReLU after it cannot run inside the conv."""
    x, w, b = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4)), jnp.ones(4)

    def f(x, w, b):
        y = onednn.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + b  # fmt: skip
        return jax.nn.relu(y), y

    (fusion,) = plan(jax.make_jaxpr(f)(x, w, b).jaxpr)
    assert (fusion.residual, fusion.relu, len(fusion.eqns)) == (None, False, 2)


def test_a_model_without_batch_norm_folds_to_itself():
    model = create_model("vgg11", num_classes=10, impl="cpu")
    x = jnp.ones((1, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    np.testing.assert_array_equal(
        fold_batch_norm(model, variables, x.shape, post_ops=True)(x), model.apply(variables, x)
    )


def test_post_ops_are_asked_for_with_the_cpu_kernels():
    """Post-ops fuse oneDNN convolutions: a plain model (the default) asking for them is told
    which kernels they need."""
    model = create_model("resnet18_cifar", num_classes=10)
    x = jnp.ones((1, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(
        ValueError, match=r"post_ops=True\) .* impl='plain': build it with impl='cpu'"
    ):
        fold_batch_norm(model, variables, x.shape, post_ops=True)
    assert set(forward_calls(fold_batch_norm(model, variables, x.shape), x)) == set()
