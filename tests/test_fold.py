"""BatchNorm folded into the convolutions: torchvision's eval logits, to the parity bound."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_flax import create_model, fold_batch_norm
from resnet_flax.inference.fold import conv_norm_pairs
from resnet_flax.io.convert import load_torchvision

SIZE = 99  # an odd size, as in the parity tests


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "vgg11_bn"])
def test_folded_eval_is_torchvision_eval(name, parity):
    torch = pytest.importorskip("torch", reason="fold parity needs torch")
    tmodel = parity.torch_model(name, seed=1).eval()
    model, variables = load_torchvision(
        name, parity.state_dict_numpy(tmodel), **parity.options(name)
    )
    x = np.random.default_rng(0).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        ref = tmodel(parity.nchw(x)).numpy()
    predict = fold_batch_norm(model, variables, x.shape)
    err = parity.rel_err(np.asarray(predict(jnp.asarray(x))), ref)
    assert err <= parity.BOUND, f"{name} folded eval: relative error {err:.2e}"


def test_norms_fed_by_a_conv_are_folded_and_the_others_kept():
    """resnet18: all 20. preact_resnet18: each block's bn2 follows conv1 (8), the stem's bn1
    follows conv1 (1); each bn1 follows a residual sum and bn_final the last block (8)."""
    x_shape = (1, 32, 32, 3)
    for name, folded, total in (("resnet18", 20, 20), ("preact_resnet18", 9, 18)):
        model = create_model(name)
        variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(x_shape))
        pairs = conv_norm_pairs(model, variables, x_shape)
        norms = [k for k in jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]]
        assert len(norms) == 3 * total  # mean, var, num_batches_tracked per BatchNorm
        assert len(pairs) == folded, name


def test_folded_preact_net_matches_unfolded(parity):
    model = create_model("preact_resnet18_cifar")
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    expected = model.apply(variables, x, train=False)
    folded = fold_batch_norm(model, variables, x.shape)(x)
    err = parity.rel_err(np.asarray(folded), np.asarray(expected))
    assert err <= 5e-6, f"relative error {err:.1e}"  # measured: 9e-7 (kernels rounded once more)
