"""On the accelerator: ``JAX_PLATFORMS=cuda python -m pytest -m accelerator`` (or ``tpu``).

Everywhere else these skip (``tests/conftest.py`` keeps the other tests on the CPU). One
train step and an evaluation through the trainer, a bfloat16 step, and parity with
torchvision at the highest and at the default matmul precision.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import resnet_flax

pytestmark = [
    pytest.mark.accelerator,
    pytest.mark.skipif(jax.default_backend() == "cpu", reason="needs an accelerator"),
]

# At "highest" the accelerator computes float32 as the CPU does: the CPU's parity bound.
HIGHEST_BOUND = 1e-4
# At the default precision a GPU multiplies in TF32 (unit round-off 2^-11) and a TPU in
# bfloat16 passes; a bound from those round-offs over resnet50's depth, not yet measured on
# a device (docs/training.md, "Accelerators").
DEFAULT_BOUND = 5e-2


def test_train_steps_and_evaluation(tmp_path, tiny_config):
    from train.loop import train_and_evaluate

    result = train_and_evaluate(tiny_config(max_steps=4), tmp_path)
    assert result["step"] == 4 and np.isfinite(result["train"]["loss"])
    assert 0.0 <= result["eval"]["accuracy"] <= 1.0


def test_bfloat16_step(tmp_path, tiny_config):
    from train.loop import train_and_evaluate

    config = tiny_config(max_steps=2, dtype="bfloat16")
    result = train_and_evaluate(config, tmp_path)
    assert result["step"] == 2 and np.isfinite(result["train"]["loss"])


@pytest.mark.parametrize(
    "precision,bound", [("highest", HIGHEST_BOUND), ("default", DEFAULT_BOUND)]
)
def test_parity_with_torchvision(precision, bound, parity):
    torch = pytest.importorskip("torch")
    tmodel = parity.torch_model("resnet50", seed=0)
    model, variables = resnet_flax.load_torchvision("resnet50", parity.state_dict_numpy(tmodel))
    x = np.random.default_rng(0).standard_normal((2, 224, 224, 3), dtype=np.float32)
    with torch.no_grad():
        ref = tmodel.eval()(parity.nchw(x)).numpy()
    with jax.default_matmul_precision(precision):
        ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    err = parity.rel_err(np.asarray(ours), ref)
    print(f"resnet50 eval at {precision} precision on {jax.devices()[0].device_kind}: {err:.2e}")
    assert err <= bound
