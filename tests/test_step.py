"""The train/eval steps and the optimizer: data-parallel equivalence, torch-exact updates.

The 8-device checks run this file as a script in a subprocess with 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``); it trains the same global batches
on a 1-device mesh and on the 8-device mesh and saves both results.
"""

from __future__ import annotations

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from resnet_flax import create_model
from resnet_flax.models.registry import init_variables
from resnet_flax.models.resnet import BasicBlock, ResNet
from train import distributed
from train.data import augment_cifar
from train.optim import decay_mask, make_optimizer, make_schedule
from train.state import new_train_state
from train.step import (
    cross_entropy,
    eval_metrics_zeros,
    make_eval_step,
    make_train_step,
    synced_batch_norm,
    train_metrics_zeros,
)

SIZE, BATCH, STEPS = 16, 16, 3


def optimizer_config(**overrides) -> ConfigDict:
    base = dict(
        optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
        decay_norm_and_bias=False, freeze_backbone=False, lr_schedule="constant",
        warmup_epochs=0.0, num_epochs=2, lr_boundaries=(), lr_decay_factor=0.1,
    )  # fmt: skip
    return ConfigDict(base | overrides)


def blocky_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Piecewise-constant uint8 images: far from the ReLU ties random noise produces, where
    a last-bit difference in summation order flips a unit and the comparison fails."""
    small = rng.integers(0, 256, (n, SIZE // 4, SIZE // 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 4, axis=1), 4, axis=2)


def normalize(images: jax.Array) -> jax.Array:
    return images.astype(jnp.float32) / 255.0 - 0.5


def small_resnet(axis_name: str | None, dtype=jnp.float32) -> ResNet:
    """A 2-stage CIFAR-style ResNet with projection shortcuts: quick to compile.

    (resnet20's zero-padding shortcuts leave activations within rounding of zero on such
    inputs; one of them flips when the summation order changes and moves the gradient by
    ~1e-3, which hides what this test checks.)
    """
    return ResNet(
        block=BasicBlock, stage_sizes=(1, 1), widths=(8, 16), stem="cifar", stem_width=8,
        num_classes=10, axis_name=axis_name, dtype=dtype,
    )  # fmt: skip


def train_on(mesh, sync: bool, steps: int = STEPS):
    """``steps`` SGD steps of a small ResNet on an in-memory data set, augmentation on."""
    model = small_resnet("batch" if sync else None)
    tx = make_optimizer(optimizer_config(), optax.constant_schedule(0.1))
    variables = init_variables(model, SIZE)
    state = new_train_state(model, variables, tx, distributed.replicated(mesh))
    rng = np.random.default_rng(0)
    data = {"image": blocky_images(rng, 64), "label": rng.integers(0, 10, 64, dtype=np.int32)}
    data = distributed.replicate(mesh, data)
    sums = distributed.replicate(mesh, train_metrics_zeros())
    step = make_train_step(mesh, model, num_classes=10, normalize=normalize, augment=augment_cifar)
    first_stats = None
    for i in range(steps):
        index = np.arange(i * BATCH, (i + 1) * BATCH, dtype=np.int32)
        batch = distributed.global_batch(mesh, {"index": index})
        state, sums = step(state, sums, batch, data)
        first_stats = jax.device_get(state.batch_stats) if i == 0 else first_stats
    return state, sums, first_stats


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree.leaves_with_path(tree)}


def run_devices(out: str) -> None:
    """The subprocess: 1 vs 8 devices with sync BN; 8 devices without (one step)."""
    one = jax.make_mesh((1,), ("batch",), devices=jax.devices()[:1])
    eight = distributed.make_mesh()
    assert eight.size == 8
    results = {}
    for name, mesh, sync, steps in (
        ("one", one, True, STEPS), ("eight", eight, True, STEPS), ("local", eight, False, 1)
    ):  # fmt: skip
        state, sums, first_stats = train_on(mesh, sync, steps)
        assert state.params["fc"]["kernel"].sharding.is_fully_replicated
        tree = {"params": state.params, "batch_stats": state.batch_stats, "sums": sums,
                "first_stats": first_stats}  # fmt: skip
        results.update({f"{name}/{k}": v for k, v in flat(tree).items()})
    for impl in ("plain", "cpu"):
        results[f"all_reduces/{impl}"] = np.asarray(resnet50_all_reduces(eight, impl))
    np.savez(out, **results)


def resnet50_all_reduces(mesh, impl: str) -> int:
    """All-reduce instructions in the compiled synced-BatchNorm train step of resnet50."""
    model = create_model("resnet50", num_classes=10, axis_name="batch", impl=impl)
    tx = optax.sgd(0.1, momentum=0.9)
    state = jax.eval_shape(
        lambda v: new_train_state(model, v, tx), init_variables(model, abstract=True)
    )
    sums = jax.eval_shape(train_metrics_zeros)
    replicated, split = distributed.replicated(mesh), jax.NamedSharding(mesh, jax.P("batch"))
    state, sums = (
        jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), t)
        for t in (state, sums)
    )
    batch = {
        "image": jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.uint8, sharding=split),
        "label": jax.ShapeDtypeStruct((16,), jnp.int32, sharding=split),
    }
    step = make_train_step(mesh, model, num_classes=10, normalize=normalize)
    hlo = step.lower(state, sums, batch, None).compile().as_text()
    return len(re.findall(r"\ball-reduce(?:-start)?\(", hlo))


@pytest.fixture(scope="module")
def device_runs(tmp_path_factory, on_devices) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("devices") / "runs.npz"
    on_devices(__file__, out)
    with np.load(out) as runs:
        return dict(runs)


def test_eight_devices_train_like_one(device_runs):
    """Same global batches, sync BN: params, BN statistics and metrics agree to 1e-5."""
    one = {k[4:]: v for k, v in device_runs.items() if k.startswith("one/")}
    eight = {k[6:]: v for k, v in device_runs.items() if k.startswith("eight/")}
    assert one.keys() == eight.keys() and len(one) > 30
    for key, a in one.items():
        b = eight[key]
        rel = np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12)
        assert rel <= 1e-5, f"{key}: relative difference {rel:.2e}"
    assert one["['sums']['count']"] == STEPS * BATCH
    # the run did something: params moved away from their init
    assert not np.allclose(one["['params']['fc']['bias']"], 0.0)


@pytest.mark.parametrize("impl", ["plain", "cpu"])
def test_synced_batch_norm_is_one_all_reduce_per_layer(device_runs, impl):
    """resnet50's 53 synced BatchNorms: one all-reduce each way (mean and mean of squares
    stacked in the forward, the two gradient sums stacked in the CPU VJP), plus the parameter
    gradients' (XLA combines those into a few) and the step's metrics. Two dependent
    all-reduces per layer each way would be over 200."""
    norms = 53
    count = int(device_runs[f"all_reduces/{impl}"])
    assert count <= 2 * norms, f"{impl}: {count} all-reduces in the compiled train step"


def test_unsynced_batch_norm_averages_running_statistics(device_runs):
    """Per-device BN normalises each slice alone; running statistics are averaged over devices.

    After one step the stem BN's running mean is the mean of the 8 slice means, which is the
    global-batch mean the synced 1-device run tracks; the running variance is smaller.
    """
    synced = {k: device_runs[f"one/['first_stats']['bn1']['{k}']"] for k in ("mean", "var")}
    local = {k: device_runs[f"local/['batch_stats']['bn1']['{k}']"] for k in ("mean", "var")}
    # Relative to the vector's norm, as the other comparisons here: an element near zero is a
    # cancellation whose last bits depend on the summation order of the two runs.
    rel = np.linalg.norm(local["mean"] - synced["mean"]) / np.linalg.norm(synced["mean"])
    assert rel <= 1e-5, f"running mean: relative difference {rel:.2e}"
    # running var = 0.9 * 1 + 0.1 * batch var; the per-slice variances leave out the spread
    # between slices, so their average is smaller than the global-batch variance
    assert np.sum(local["var"] - 0.9) < 0.99 * np.sum(synced["var"] - 0.9)


def sgd_torch_reference(params, grads_seq, lr, momentum, nesterov, wd, decay_keys):
    torch = pytest.importorskip("torch", reason="torch is the reference optimizer")
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    groups = [
        {"params": [tensors[k] for k in tensors if k in decay_keys], "weight_decay": wd},
        {"params": [tensors[k] for k in tensors if k not in decay_keys], "weight_decay": 0.0},
    ]
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    for grads in grads_seq:
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k])
        opt.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_sgd_is_torch_sgd(decay_norm_and_bias):
    """Coupled L2 + momentum + Nesterov, BN/bias excluded or not: torch.optim.SGD's updates."""
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    grads_seq = [
        {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
        for _ in range(3)
    ]
    config = optimizer_config(decay_norm_and_bias=decay_norm_and_bias, weight_decay=0.01)
    tx = make_optimizer(config, optax.constant_schedule(0.1))
    ours, opt_state = dict(params), tx.init(params)
    for grads in grads_seq:
        updates, opt_state = tx.update(grads, opt_state, ours)
        ours = optax.apply_updates(ours, updates)
    decayed = {"kernel", "bias"} if decay_norm_and_bias else {"kernel"}
    ref = sgd_torch_reference(params, grads_seq, 0.1, 0.9, True, 0.01, decayed)
    for k in params:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-5, atol=1e-6)


def test_adamw_is_torch_adamw():
    torch = pytest.importorskip("torch", reason="torch is the reference optimizer")
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 3)).astype(np.float32)
    grads_seq = [rng.normal(size=w.shape).astype(np.float32) for _ in range(4)]
    config = optimizer_config(optimizer="adamw", weight_decay=0.05, nesterov=False)
    tx = make_optimizer(config, optax.constant_schedule(1e-2))
    ours, opt_state = {"kernel": w}, tx.init({"kernel": w})
    t = torch.tensor(w, requires_grad=True)
    opt = torch.optim.AdamW([t], lr=1e-2, weight_decay=0.05)
    for g in grads_seq:
        updates, opt_state = tx.update({"kernel": g}, opt_state, ours)
        ours = optax.apply_updates(ours, updates)
        t.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(ours["kernel"], t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_decay_mask_excludes_every_1d_leaf():
    model = create_model("resnet20")
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    mask = {jax.tree_util.keystr(k): v for k, v in jax.tree.leaves_with_path(decay_mask(params))}
    shapes = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree.leaves_with_path(params)}
    assert all(mask[k] == (len(shapes[k]) > 1) for k in mask)
    assert not mask["['bn1']['scale']"] and not mask["['fc']['bias']"]
    assert mask["['conv1']['kernel']"] and mask["['fc']['kernel']"]


def test_schedules():
    steps = 10  # per epoch; 2 epochs
    cosine = make_schedule(optimizer_config(lr_schedule="cosine", warmup_epochs=0.5), steps)
    assert float(cosine(0)) == 0.0 and float(cosine(5)) == pytest.approx(0.1)
    assert float(cosine(20)) == pytest.approx(0.0, abs=1e-7)
    assert 0.0 < float(cosine(12)) < 0.1
    piecewise = make_schedule(
        optimizer_config(lr_schedule="piecewise", lr_boundaries=(1, 1.5), lr_decay_factor=0.1),
        steps,
    )
    values = [float(piecewise(s)) for s in (0, 9, 10, 14, 15, 19)]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    onecycle = make_schedule(optimizer_config(lr_schedule="onecycle"), steps)
    lrs = np.array([float(onecycle(s)) for s in range(21)])
    assert lrs.argmax() == 6 and lrs.max() == pytest.approx(0.1)  # pct_start 0.3 of 20
    assert lrs[0] == pytest.approx(0.1 / 25) and lrs[-1] < 1e-4
    constant = make_schedule(optimizer_config(lr_schedule="constant", warmup_epochs=1), steps)
    assert float(constant(5)) == pytest.approx(0.05) and float(constant(15)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_schedule"):
        make_schedule(optimizer_config(lr_schedule="linear"), steps)


def test_label_smoothing_is_torch_cross_entropy():
    torch = pytest.importorskip("torch", reason="torch is the reference loss")
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 6).astype(np.int32)
    ours = cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels), 5, 0.1)
    assert ours.dtype == jnp.float32
    ref = torch.nn.functional.cross_entropy(
        torch.tensor(np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float32)),
        torch.tensor(labels, dtype=torch.long),
        reduction="none",
        label_smoothing=0.1,
    )
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), rtol=1e-5)


def test_freeze_backbone_trains_the_head_only():
    mesh = distributed.make_mesh()
    model = create_model("lenet5", num_classes=4)
    variables = init_variables(model, 32)
    config = optimizer_config(freeze_backbone=True)
    tx = make_optimizer(config, optax.constant_schedule(0.1), head=type(model).head)
    state = new_train_state(model, variables, tx)
    step = make_train_step(mesh, model, num_classes=4, normalize=normalize)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
             "label": rng.integers(0, 4, 8, dtype=np.int32)}  # fmt: skip
    before = flat(state.params)
    new_state, _ = step(state, train_metrics_zeros(), distributed.global_batch(mesh, batch), None)
    after = flat(new_state.params)
    for key in before:
        moved = not np.array_equal(before[key], after[key])
        assert moved == key.startswith("['fc3']"), key


def test_bfloat16_computes_in_bf16_with_float32_state():
    mesh = distributed.make_mesh()
    model = small_resnet(None, dtype=jnp.bfloat16)
    variables = init_variables(model, SIZE)
    tx = make_optimizer(optimizer_config(), optax.constant_schedule(0.1))
    state = new_train_state(model, variables, tx, distributed.replicated(mesh))
    bf16 = lambda images: normalize(images).astype(jnp.bfloat16)  # noqa: E731
    step = make_train_step(mesh, model, num_classes=10, normalize=bf16)
    rng = np.random.default_rng(0)
    batch = {"image": blocky_images(rng, 8), "label": rng.integers(0, 10, 8, dtype=np.int32)}
    sums = distributed.replicate(mesh, train_metrics_zeros())
    state, sums = step(state, sums, distributed.global_batch(mesh, batch), None)
    logits = jax.eval_shape(model.apply, variables, bf16(jnp.asarray(batch["image"])))
    assert logits.dtype == jnp.bfloat16
    dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))}
    assert dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
    assert state.batch_stats["bn1"]["mean"].dtype == jnp.float32
    assert np.isfinite(float(sums["loss"])) and int(sums["nonfinite_step"]) == -1


def test_eval_step_masks_padding_and_counts_top5():
    """Masked rows count nowhere; flip TTA averages softmaxes; top-5 at >= 100 classes."""
    mesh = distributed.make_mesh()
    model = create_model("lenet5", num_classes=100)
    variables = init_variables(model, 32)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 100, 8, dtype=np.int32)
    mask = np.array([True] * 5 + [False] * 3)
    batch = distributed.global_batch(mesh, {"image": images, "label": labels, "mask": mask})
    for tta in (False, True):
        step = make_eval_step(mesh, model, num_classes=100, normalize=normalize, flip_tta=tta)
        sums = jax.device_get(step(variables, eval_metrics_zeros(100), batch, None))
        x = normalize(jnp.asarray(images[:5]))
        probs = jax.nn.softmax(model.apply(variables, x))
        if tta:
            probs = (probs + jax.nn.softmax(model.apply(variables, x[:, :, ::-1]))) / 2
        probs = np.asarray(probs)
        assert sums["count"] == 5
        expected_loss = -np.log(probs[np.arange(5), labels[:5]]).sum()
        np.testing.assert_allclose(sums["loss"], expected_loss, rtol=1e-5)
        assert sums["correct"] == (probs.argmax(-1) == labels[:5]).sum()
        top5 = (np.argsort(-probs, -1)[:, :5] == labels[:5, None]).any(-1).sum()
        assert sums["correct5"] == top5


def test_the_step_takes_its_batch_norm_axis_from_the_model():
    """One source of truth: a model synced over another axis is refused, not half-synced."""
    mesh = distributed.make_mesh()
    assert synced_batch_norm(small_resnet("batch")) and not synced_batch_norm(small_resnet(None))
    with pytest.raises(ValueError, match="axis_name is 'devices'.*axis_name='batch'"):
        make_train_step(mesh, small_resnet("devices"), num_classes=10, normalize=normalize)


if __name__ == "__main__":
    run_devices(sys.argv[1])
