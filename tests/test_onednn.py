"""The oneDNN convolutions behind ``impl="cpu"``: value and both gradients against torch's
float64 autograd, in every geometry the models use and the odd ones they might."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_flax.cpu import onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason="oneDNN is not installed")

DN = ("NHWC", "HWIO", "NHWC")
# measured worst relative error against float64: 4.9e-7 (kernel gradient of the dilated
# group conv)
BOUND = 1e-6


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def dimension_numbers(x, w):
    return jax.lax.conv_dimension_numbers(x.shape, w.shape, DN)


def torch_reference(x, w, dy, stride, padding, dilation, groups):
    """``(y, dx, dw)`` from torch in float64, NHWC/HWIO in and out."""
    torch = pytest.importorskip("torch")
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64)).requires_grad_(True)
    tw = torch.from_numpy(w.transpose(3, 2, 0, 1).astype(np.float64)).requires_grad_(True)
    (pt, pb), (pl, pr) = padding
    padded = torch.nn.functional.pad(tx, (pl, pr, pt, pb))
    y = torch.nn.functional.conv2d(padded, tw, None, stride, 0, dilation, groups)
    y.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).astype(np.float64)))
    return (
        y.detach().numpy().transpose(0, 2, 3, 1),
        tx.grad.numpy().transpose(0, 2, 3, 1),
        tw.grad.numpy().transpose(2, 3, 1, 0),
    )


@pytest.mark.parametrize(
    "size,cin,cout,kernel,stride,padding,dilation,groups",
    [
        (9, 8, 12, 3, 1, 1, 1, 1),  # BasicBlock
        (10, 8, 16, 3, 2, 1, 1, 1),  # downsampling 3x3
        (10, 8, 16, 1, 2, 0, 1, 1),  # projection shortcut
        (20, 3, 8, 7, 2, 3, 1, 1),  # ImageNet stem
        (11, 8, 12, 3, 1, 2, 2, 4),  # ResNeXt group conv, dilated
        (9, 6, 6, 3, 1, 1, 1, 6),  # depthwise
        (9, 8, 8, 3, 2, ((0, 1), (1, 0)), 1, 1),  # asymmetric padding
    ],
)
def test_value_and_gradients_match_torch(
    size, cin, cout, kernel, stride, padding, dilation, groups
):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, size, size, cin)).astype(np.float32)
    w = rng.standard_normal((kernel, kernel, cin // groups, cout)).astype(np.float32)
    pads = padding if isinstance(padding, tuple) else ((padding, padding), (padding, padding))

    def f(x, w):
        return onednn.conv_general_dilated(
            x,
            w,
            (stride, stride),
            pads,
            rhs_dilation=(dilation, dilation),
            dimension_numbers=dimension_numbers(x, w),
            feature_group_count=groups,
        )

    y, vjp = jax.vjp(jax.jit(f), jnp.asarray(x), jnp.asarray(w))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw = jax.jit(vjp)(jnp.asarray(dy))
    ty, tdx, tdw = torch_reference(x, w, dy, stride, pads, dilation, groups)
    assert y.shape == ty.shape
    for ours, theirs in ((y, ty), (dx, tdx), (dw, tdw)):
        assert rel(ours, theirs) <= BOUND


def test_unsupported_calls_are_refused_not_miscomputed():
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    pads = ((1, 1), (1, 1))
    dn = dimension_numbers(x, w)
    assert onednn.supports(x, w, pads, dimension_numbers=dn)
    assert not onednn.supports(x.astype(jnp.bfloat16), w, pads, dimension_numbers=dn)
    assert not onednn.supports(x, w, "SAME", dimension_numbers=dn)
    assert not onednn.supports(x, w, pads, lhs_dilation=(2, 2), dimension_numbers=dn)
    nchw = jax.lax.conv_dimension_numbers((2, 4, 8, 8), (4, 4, 3, 3), ("NCHW", "OIHW", "NCHW"))
    assert not onednn.supports(
        jnp.ones((2, 4, 8, 8)), jnp.ones((4, 4, 3, 3)), pads, dimension_numbers=nchw
    )
    with pytest.raises(ValueError, match="float32 NHWC/HWIO"):
        onednn.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)


def test_a_failing_kernel_raises_in_jax_with_its_name():
    """An error inside the FFI handler reaches the caller (never a silently unwritten output)."""
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    geometry = onednn._geometry(x.shape, w.shape, (1, 1), ((1, 1), (1, 1)), None, 3)  # 4 in 3
    with pytest.raises(Exception, match="resnet_flax.cpu.onednn.fwd: RuntimeError: oneDNN"):
        jax.block_until_ready(onednn._call("fwd", geometry, (2, 8, 8, 4), x, w))


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_post_ops_are_the_separate_operations_to_the_bit(residual, relu):
    """conv + bias [+ residual] [ReLU] in one call equals the conv, then XLA's adds and max."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 9, 9, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 16, 32)) * 0.1, jnp.float32)
    b = jnp.asarray(rng.standard_normal(32), jnp.float32)
    r = jnp.asarray(rng.standard_normal((3, 5, 5, 32)), jnp.float32) if residual else None
    pads = ((1, 1), (1, 1))

    def fused(x, w, b, r):
        return onednn.conv_forward(x, w, b, (2, 2), pads, residual=r, relu=relu)

    def separate(x, w, b, r):
        y = onednn.conv_general_dilated(x, w, (2, 2), pads, dimension_numbers=DN) + b
        y = y if r is None else y + r
        return jnp.maximum(y, 0) if relu else y

    want = jax.jit(separate)(x, w, b, r)
    np.testing.assert_array_equal(jax.jit(fused)(x, w, b, r), want)
    if residual:  # the residual's buffer is taken for the output only when nothing else needs it
        both = jax.jit(lambda x, w, b, r: (fused(x, w, b, r), r * 2))(x, w, b, r)
        np.testing.assert_array_equal(both[0], want)
        np.testing.assert_array_equal(both[1], r * 2)


def test_post_ops_refuse_a_residual_of_another_shape():
    x, w, b = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4)), jnp.ones(4)
    with pytest.raises(ValueError, match=r"residual of shape \(2, 4, 4, 4\)"):
        onednn.conv_forward(x, w, b, (1, 1), ((1, 1), (1, 1)), residual=jnp.ones((2, 4, 4, 4)))


def test_a_script_exits_with_a_program_still_running(tmp_path):
    """The oneDNN calls are Python callbacks; a program still running when the interpreter
    shuts down used to hang the process (its result dropped, so nothing waited for it)."""
    script = tmp_path / "dropped.py"
    script.write_text(
        "import jax, jax.numpy as jnp\n"
        "from resnet_flax import create_model, fold_batch_norm\n"
        "model = create_model('resnet18', num_classes=10)\n"
        "x = jnp.zeros((8, 64, 64, 3))\n"
        "variables = model.init(jax.random.key(0), x[:1])\n"
        "print(fold_batch_norm(model, variables, x.shape)(x).shape)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(8, 10)" in done.stdout


LEAK_SCRIPT = """
import json, jax, jax.numpy as jnp, numpy as np
from resnet_flax import create_model, fold_batch_norm
from resnet_flax.cpu import onednn

model = create_model("resnet20", num_classes=10, impl="cpu")
x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 32, 32, 3)), jnp.float32)
variables = model.init(jax.random.key(0), x[:1], train=False)

def loss(params, stats):
    out, new = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                           mutable=["batch_stats"])
    return out.sum(), new

paths = {
    "train": jax.jit(lambda v: jax.grad(loss, has_aux=True)(v["params"], v["batch_stats"])),
    "eval": jax.jit(lambda v: model.apply(v, x, train=False)),
    "predict": lambda v: folded(x),
}
folded = fold_batch_norm(model, variables, x.shape, post_ops=True)

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

report = {}
for name, fn in paths.items():
    for _ in range(50):
        jax.block_until_ready(fn(variables))
    plans, rss = onednn._runtime().built, rss_mb()
    for _ in range(STEPS):
        jax.block_until_ready(fn(variables))
    report[name] = {"plans": onednn._runtime().built - plans, "rss_mb": rss_mb() - rss}
print(json.dumps(report))
"""


def test_repeated_calls_reuse_their_plans_and_memory(tmp_path):
    """A train step, an eval forward and predict's folded forward, each called a few hundred
    times: plans are reused (the pool grows only while more calls run at once than before),
    and resident memory stays flat. XLA runs the handlers on its own threads, where a
    per-thread cache was empty at every call: each call built a plan it never freed (56 plans
    and 2.2 MB per resnet20 train step; a 30-epoch CIFAR run ran out of memory). Measured
    after the fix, over the 200 calls after 50: 0-1 plans and 0-26 MB per path (a plan the
    pool adds when calls first overlap, and malloc's own arenas)."""
    steps = 200
    script = tmp_path / "repeat.py"
    script.write_text(LEAK_SCRIPT.replace("STEPS", str(steps)))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for grew in report.values():
        assert grew["plans"] <= 4, report  # the leak: 56 a step, 11,200 here
        assert grew["rss_mb"] < 64, report  # the leak: 2.2 MB a step, 440 MB here


def test_threads_setting_is_checked(monkeypatch):
    monkeypatch.setenv(onednn.THREADS_ENV, "3")
    assert onednn.threads() == 3
    monkeypatch.setenv(onednn.THREADS_ENV, "many")
    with pytest.raises(ValueError, match="RESNET_FLAX_ONEDNN_THREADS='many'"):
        onednn.threads()


def test_library_can_be_turned_off_or_pointed_elsewhere(monkeypatch):
    onednn.library.cache_clear()
    try:
        monkeypatch.setenv(onednn.ENV, "0")
        assert onednn.library() is None and not onednn.available()
        onednn.library.cache_clear()
        monkeypatch.setenv(onednn.ENV, "/nonexistent/libdnnl.so.3")
        with pytest.raises(OSError, match="no oneDNN 3.x library there"):
            onednn.library()
    finally:
        onednn.library.cache_clear()
        monkeypatch.delenv(onednn.ENV)
        assert onednn.available() and onednn.version().startswith("3.")


def test_plans_are_built_with_the_thread_count_they_run_with(monkeypatch):
    """oneDNN splits a primitive's work by the OpenMP thread count it sees when it creates
    it; XLA's threads start at OpenMP's default. A plan built at the default but run with
    ``threads()`` summed its kernel gradient in an order that depended on which thread built
    it (a flaky two-process comparison)."""
    gomp = ctypes.CDLL("libgomp.so.1")
    default = []
    fresh = threading.Thread(target=lambda: default.append(gomp.omp_get_max_threads()))
    fresh.start()
    fresh.join()
    if default[0] < 2:
        pytest.skip("OpenMP's default is one thread here: nothing to tell apart")

    class Built(Exception):
        pass

    seen = []

    def record(*args):
        seen.append(gomp.omp_get_max_threads())
        raise Built

    monkeypatch.setattr(onednn, "_Plan", record)
    runtime = onednn._Runtime(onednn.library(), threads=1)
    errors = []

    def call():
        try:
            runtime.run("fwd", [], [], (1,) * len(onednn.FIELDS))
        except Built as built:
            errors.append(built)

    thread = threading.Thread(target=call)  # a fresh thread, as XLA's are at first
    thread.start()
    thread.join()
    assert errors and seen == [1]


def test_this_jaxlib_fits_the_ffi_structs():
    from resnet_flax.cpu import xla_ffi

    assert xla_ffi.incompatibility() is None


FFI_MISFIT = """
import warnings
import jax, jax.numpy as jnp, numpy as np
from resnet_flax.cpu import onednn, xla_ffi
from resnet_flax.models.layers import conv
xla_ffi.API_VERSION = (99, 0)  # a jaxlib whose FFI these structs do not describe
x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
layer = conv(4, 3, impl="cpu")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    variables = layer.init(jax.random.key(0), x)
    y = layer.apply(variables, x + 1)  # asked again: no second warning
plain = conv(4, 3, impl="plain").apply(variables, x + 1)
messages = [str(w.message) for w in caught if "does not fit" in str(w.message)]
assert len(messages) == 1, [str(w.message) for w in caught]
assert "API version (99.0) is incompatible" in messages[0] and not onednn.available()
np.testing.assert_allclose(y, plain, rtol=1e-5, atol=1e-5)
print("fell back")
"""


def test_a_jaxlib_whose_ffi_does_not_fit_falls_back_to_xla_with_one_warning():
    done = subprocess.run([sys.executable, "-c", FFI_MISFIT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fell back" in done.stdout
