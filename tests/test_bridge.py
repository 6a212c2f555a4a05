"""resnet_flax.to_nnx: a model as an NNX module, trained with nnx.Optimizer, and back."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import resnet_flax
from resnet_flax.models.registry import init_variables


def test_nnx_module_evaluates_trains_and_round_trips():
    model = resnet_flax.create_model("resnet18", num_classes=3)
    variables = init_variables(model, 32)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    labels = jnp.array([0, 1, 2, 0])
    module = resnet_flax.to_nnx(model, variables)

    np.testing.assert_array_equal(module(x), model.apply(variables, x))  # evaluation
    expected, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(module(x, train=True), expected)  # no mutable to pass
    state = resnet_flax.to_linen_variables(module)
    for a, b in zip(
        jax.tree.leaves(state["batch_stats"]), jax.tree.leaves(updates["batch_stats"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)  # the BatchNorm state was updated in place
    assert set(state) == {"params", "batch_stats"}  # no intermediates piled up

    # the NNX page's training loop (docs/nnx.md)
    optimizer = nnx.Optimizer(module, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def train_step(module, optimizer, x, labels):
        def loss_fn(module):
            logits = module(x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(module)
        optimizer.update(module, grads)
        return loss

    losses = [float(train_step(module, optimizer, x, labels)) for _ in range(5)]
    assert losses[-1] < losses[0]
    trained = resnet_flax.to_linen_variables(module)
    assert int(trained["batch_stats"]["bn1"]["num_batches_tracked"]) == 6
    assert set(trained) == {"params", "batch_stats"}
    assert not np.allclose(trained["params"]["fc"]["kernel"], variables["params"]["fc"]["kernel"])
    # back to linen, and from there to torchvision's format and in again
    exported = resnet_flax.export_torchvision("resnet18", trained)
    _, again = resnet_flax.load_torchvision("resnet18", exported)
    np.testing.assert_array_equal(model.apply(again, x), module(x))
