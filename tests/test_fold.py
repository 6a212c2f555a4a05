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


def test_folded_resnetv2_is_timm_eval(parity):
    """timm's resnetv2_50 (pre-activation, BatchNorm): each block's norm2 and norm3 fold into
    the conv before them; norm1 and the final norm stay."""
    torch = pytest.importorskip("torch", reason="fold parity needs torch")
    pytest.importorskip("timm", reason="timm's reference needs timm")
    tmodel = parity.timm_model("resnetv2_50", seed=1).eval()
    model, variables = load_torchvision("resnetv2_50", parity.state_dict_numpy(tmodel))
    x = np.random.default_rng(0).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    assert len(conv_norm_pairs(model, variables, x.shape)) == 2 * 16
    with torch.no_grad():
        ref = tmodel(parity.nchw(x)).numpy()
    err = parity.rel_err(np.asarray(fold_batch_norm(model, variables, x.shape)(x)), ref)
    assert err <= parity.BOUND, f"resnetv2_50 folded eval: relative error {err:.2e}"


def test_a_weight_standardised_conv_is_not_folded(parity):
    """Standardisation would undo a BatchNorm scale folded into the kernel: such pairs stay."""
    from resnet_flax.models.resnetv2 import ResNetV2

    x_shape = (2, 32, 32, 3)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, x_shape), jnp.float32)
    for standardize, folded in ((None, 4), (1e-8, 0)):
        model = ResNetV2((1, 1), widths=(64, 128), norm_layer="batch", standardize=standardize)
        variables = model.init(jax.random.key(0), x)
        assert len(conv_norm_pairs(model, variables, x_shape)) == folded
        expected = model.apply(variables, x, train=False)
        err = parity.rel_err(np.asarray(fold_batch_norm(model, variables, x_shape)(x)), expected)
        assert err <= 5e-6, f"standardize={standardize}: relative error {err:.1e}"


@pytest.mark.parametrize(
    ("name", "folded"),
    [
        ("resnet10t", 14),  # tiered stem (3) + 4 blocks x 2 + 3 projections (layer1 has none)
        ("resnetblur18", 20),
        ("resnetaa34d", 38),  # deep stem (3) + 16 blocks x 2 + 3 projections
        ("resnetv2_50d_evos", 0),  # EvoNorm is no BatchNorm: nothing to fold, and kept
        ("senet154", 157),  # deep stem (3) + 50 blocks x 3 + 4 projections (3x3 where strided)
    ],
)
def test_the_new_timm_families_fold_and_run_the_cpu_kernels(name, folded, parity):
    """timm's eval logits from ``fold_batch_norm`` and from the CPU kernels (eval and train
    mode), for the layers the timm families added: tiered stems, blur and average-pool
    anti-aliasing, EvoNorm (no BatchNorm to fold), SENet-154's 3x3 strided shortcut."""
    torch = pytest.importorskip("torch", reason="fold parity needs torch")
    pytest.importorskip("timm", reason="timm's reference needs timm")
    tmodel = parity.timm_model(name, seed=1)
    model, variables = load_torchvision(name, parity.state_dict_numpy(tmodel))
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    assert len(conv_norm_pairs(model, variables, x.shape)) == folded
    with torch.no_grad():
        ref = tmodel.eval()(parity.nchw(x)).numpy()
        ref_train = tmodel.train()(parity.nchw(x)).numpy()
    err = parity.rel_err(np.asarray(fold_batch_norm(model, variables, x.shape)(x)), ref)
    assert err <= parity.BOUND, f"{name} folded eval: relative error {err:.2e}"
    cpu = model.clone(impl="cpu")
    with jax.default_matmul_precision("highest"):
        err = parity.rel_err(np.asarray(jax.jit(cpu.apply)(variables, x)), ref)
        assert err <= parity.BOUND, f"{name} CPU kernels, eval: relative error {err:.2e}"
        train = jax.jit(lambda v, x: cpu.apply(v, x, train=True, mutable=["batch_stats"])[0])
        err = parity.rel_err(np.asarray(train(variables, x)), ref_train)
        assert err <= parity.BOUND, f"{name} CPU kernels, train: relative error {err:.2e}"
