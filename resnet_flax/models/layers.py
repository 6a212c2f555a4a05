"""The building blocks every model uses: one conv factory, one norm factory, pooling.

Every convolution in the package is made by :func:`conv`, every normalisation by :func:`norm`
(:class:`BatchNorm` or :class:`GroupNorm`) and every max pooling by :func:`max_pool`, so an
implementation is swapped in one place: each takes ``impl``, the name of a set of
:class:`Kernels`.

- ``"plain"`` (the default, here): the textbook formulations in plain XLA, differentiated by
  autodiff. They compose with every JAX transform on every backend: ``jit``, ``grad`` and
  higher-order gradients, ``jvp``/``jacfwd``, ``vmap``, ``checkpoint``, ``jax.export``,
  sharded ``jit``.
- ``"cpu"``: :mod:`resnet_flax.cpu`, imported the first time it is asked for (the models never
  import it), the formulations that run fastest on XLA:CPU (oneDNN convolutions, a fused
  BatchNorm VJP). They compute the same numbers to float32 round-off (``tests/test_layers.py``)
  and support ``jit``, one ``grad``, ``vmap``, ``checkpoint`` and ``shard_map``; forward-mode
  and second-order differentiation and ``jax.export`` are refused with an error that says so.
- ``"auto"``: the fastest set for JAX's default backend (``"cpu"`` on a CPU), else
  ``"plain"``: the applications' choice (the trainer, the bench, ``predict``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype
from jax.sharding import PartitionSpec as P

Dtype = Any
Impl = str  # "plain" (the default), "cpu", "auto", or the name of other registered kernels

# (x, scale, bias, epsilon, axis_name, dtype) -> (y, batch mean, biased batch variance)
BatchNormTrain = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]
# (x, kernel_size, stride, padding) -> y
MaxPool = Callable[[jax.Array, int, int, int], jax.Array]


@dataclasses.dataclass(frozen=True)
class Kernels:
    """One formulation of the operations whose speed depends on the backend.

    ``conv_general_dilated`` replaces ``lax.conv_general_dilated`` inside ``nn.Conv`` (``None``:
    lax's own); ``batch_norm_train`` is training-mode BatchNorm; ``max_pool`` is max pooling
    with symmetric padding. Each must compute what the plain formulation computes.
    ``compiler_options`` are the XLA options a program using them should be compiled with
    (:func:`compiler_options`).
    """

    conv_general_dilated: Callable[..., jax.Array] | None
    batch_norm_train: BatchNormTrain
    max_pool: MaxPool
    compiler_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_KERNELS: dict[str, Kernels] = {}
# Kernels that live in a module of their own, imported when first asked for:
# name -> (module, the JAX backend whose "auto" they are).
_PROVIDERS: dict[str, tuple[str, str]] = {"cpu": ("resnet_flax.cpu.kernels", "cpu")}


def register_kernels(name: str, kernels: Kernels) -> None:
    """Make ``impl=name`` select ``kernels`` (a provider module calls this when imported)."""
    if name in ("auto", "plain") and name in _KERNELS:
        raise ValueError(f"{name!r} is taken: choose another name for these kernels")
    _KERNELS[name] = kernels


def impl_names() -> tuple[str, ...]:
    """Every value ``impl`` takes."""
    return tuple(dict.fromkeys(("plain", *_KERNELS, *_PROVIDERS, "auto")))


def resolve_impl(impl: Impl) -> str:
    """The kernels' name ``impl`` stands for: ``"auto"`` is the provider for JAX's default
    backend (``"cpu"`` on a CPU), else ``"plain"``."""
    if impl == "auto":
        backend = jax.default_backend()
        return next((n for n, (_, b) in _PROVIDERS.items() if b == backend), "plain")
    if impl not in _KERNELS and impl not in _PROVIDERS:
        *names, last = [repr(name) for name in impl_names()]
        raise ValueError(f"impl must be {', '.join(names)} or {last}, not {impl!r}")
    return impl


def kernels(impl: Impl) -> Kernels:
    """The :class:`Kernels` that ``impl`` selects, importing their module the first time."""
    name = resolve_impl(impl)
    if name not in _KERNELS:
        importlib.import_module(_PROVIDERS[name][0])  # registers them
    return _KERNELS[name]


def compiler_options(impl: Impl) -> dict[str, Any] | None:
    """The XLA compiler options for programs built with ``impl``'s kernels, as ``jax.jit``'s
    ``compiler_options`` takes them (``None``: XLA's defaults, as for ``"plain"``)."""
    return dict(kernels(impl).compiler_options) or None


# torchvision's initialisers, so that a Flax-initialised model is distributed like torchvision's.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear_init(fan_in: int) -> nn.initializers.Initializer:
    """torch.nn.Linear's default init for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(
    features: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | None = None,
    *,
    groups: int = 1,
    dilation: int = 1,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    kernel_init: nn.initializers.Initializer = kaiming_normal_fan_out,
    standardize: float | None = None,
    impl: Impl = "plain",
    name: str | None = None,
) -> nn.Conv:
    """The one conv factory: torch's ``nn.Conv2d`` semantics in NHWC.

    Padding is explicit and symmetric, as torch pads (XLA's ``'SAME'`` pads stride-2 layers
    asymmetrically and cannot take torchvision weights). ``padding=None`` means
    ``dilation * (kernel_size - 1) // 2``, torchvision's choice for every conv it makes.
    ``standardize``: weight standardisation with this epsilon (timm's ``StdConv2d``, see
    :class:`StandardizedKernel`); ``None``, a plain conv.
    """
    if padding is None:
        padding = dilation * (kernel_size - 1) // 2
    extra = {} if standardize is None else {"promote_dtype": StandardizedKernel(standardize)}
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=kernel_init,
        bias_init=nn.initializers.zeros,
        conv_general_dilated=kernels(impl).conv_general_dilated,
        name=name,
        **extra,
    )


@dataclasses.dataclass(frozen=True)
class StandardizedKernel:
    """Weight standardisation (Qiao et al. 2019; BiT's and timm's ``StdConv2d``) as an
    ``nn.Conv`` ``promote_dtype``: each output channel's kernel shifted to zero mean and scaled
    to unit biased variance, ``(w - mean) / sqrt(var + epsilon)``, every time the conv runs.

    It runs in float32 on the stored kernel, before the cast to the conv's dtype, so a bf16
    conv standardises the full-precision weights. The stored parameter stays the raw kernel
    (timm's ``weight``), so weights convert as for any conv.
    """

    epsilon: float

    def __call__(self, inputs, kernel, bias, dtype=None):
        k = kernel.astype(statistics_dtype(kernel.dtype))
        axes = tuple(range(k.ndim - 1))  # HWIO: all but the output channels
        mean = jnp.mean(k, axes, keepdims=True)
        var = jnp.mean(jnp.square(k - mean), axes, keepdims=True)
        k = ((k - mean) * jax.lax.rsqrt(var + self.epsilon)).astype(kernel.dtype)
        return promote_dtype(inputs, k, bias, dtype=dtype)


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm2d``, exactly, over the last axis.

    - ``eps=1e-5``; ``momentum=0.1`` in torch's convention (weight of the *new* batch).
    - Training normalises with the biased batch variance and updates ``running_var`` with the
      *unbiased* one, as torch does, so one train step in either framework leaves the same state.
    - State lives in the ``batch_stats`` collection: ``mean``, ``var`` and
      ``num_batches_tracked`` (torch's counter, kept so import/export round-trips exactly).
    - ``axis_name``: inside ``shard_map``/``pmap``, the statistics are taken over the whole
      global batch (synchronised BatchNorm); ``None`` keeps them per device.
    - Statistics are computed in float32 whatever ``dtype`` the activations have (float64 for
      float64 ones, so that a float64 model is a float64 reference).
    """

    epsilon: float = 1e-5
    momentum: float = 0.1
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    axis_name: str | None = None
    dtype: Dtype = jnp.float32
    impl: Impl = "plain"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        count = self.variable(
            "batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32)
        )
        if not train:
            return affine(x, scale, bias, ra_mean.value, ra_var.value, self.epsilon, self.dtype)

        n = statistics_count(x, self.axis_name)
        if n == 1 and not self.is_initializing():  # torch: "Expected more than 1 value ..."
            raise ValueError(
                f"BatchNorm {'/'.join(self.scope.path)!r} in training mode sees one value per "
                f"channel (input {tuple(x.shape)}): it would output its bias whatever the input, "
                "and its running variance would decay to 0. Train with more examples per "
                "device (batch_size) or larger images, or call it with train=False."
            )
        train_fn = kernels(self.impl).batch_norm_train
        y, mean, var = train_fn(x, scale, bias, self.epsilon, self.axis_name, self.dtype)
        if not self.is_initializing():
            unbiased = var * (n / max(n - 1, 1))  # torch's running_var convention
            ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
            ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * unbiased
            count.value = count.value + 1
        return y


class GroupNorm(nn.Module):
    """``torch.nn.GroupNorm`` (timm's ``GroupNorm``: 32 groups, eps 1e-5) over the last axis,
    taking BatchNorm's call signature so the blocks use either. Statistics are per example, so
    ``train`` changes nothing; they are computed in float32 (float64 for float64 input),
    two-pass, as torch's."""

    num_groups: int = 32
    epsilon: float = 1e-5
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        features = x.shape[-1]
        grouped, mean, var = group_moments(x, self.num_groups, "GroupNorm")
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        y = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        return (y * scale + bias).astype(self.dtype)


def group_moments(
    x: jax.Array, num_groups: int, layer: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``x`` in float32 (float64 for float64 input) split into ``num_groups`` groups of
    channels, ``(..., groups, channels per group)``, and each example's and group's mean and
    biased variance over space and the group's channels, two-pass, as torch's GroupNorm
    (and timm's ``group_std``) take them. ``layer`` names the layer in the error for a
    channel count that does not split."""
    features = x.shape[-1]
    if features % num_groups:
        raise ValueError(f"{layer}: {features} channels do not split into {num_groups}")
    x32 = x.astype(statistics_dtype(x.dtype))
    grouped = x32.reshape(*x.shape[:-1], num_groups, features // num_groups)
    axes = (*range(1, x.ndim - 1), x.ndim)  # space and the channels of a group
    mean = jnp.mean(grouped, axes, keepdims=True)
    var = jnp.mean(jnp.square(grouped - mean), axes, keepdims=True)
    return grouped, mean, var


class EvoNormS0(nn.Module):
    """timm's ``EvoNorm2dS0`` (Liu et al., "Evolving Normalization-Activation Layers"): a
    normalisation with its own non-linearity, ``x * sigmoid(v * x) / group_std(x) * scale +
    bias``, the standard deviation per example over groups of 32 (biased, ``eps`` 1e-5 inside
    the root, in float32). Per example, so ``train`` changes nothing. ``activates``: the
    caller adds no ReLU after it."""

    num_groups: int = 32
    epsilon: float = 1e-5
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    dtype: Dtype = jnp.float32

    activates: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        features = x.shape[-1]
        grouped, _, var = group_moments(x, self.num_groups, "EvoNormS0")
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        v = self.param("v", nn.initializers.ones, (features,), jnp.float32)
        x32 = grouped.reshape(x.shape)
        std = jnp.broadcast_to(jnp.sqrt(var + self.epsilon), grouped.shape).reshape(x.shape)
        y = x32 * jax.nn.sigmoid(x32 * v) / std
        return (y * scale + bias).astype(self.dtype)


class FilterResponseNormTLU(nn.Module):
    """timm's ``FilterResponseNormTlu2d`` (Singh and Krishnan, "Filter Response
    Normalization"): ``x / sqrt(mean_hw(x^2) + eps) * scale + bias``, then the thresholded
    linear unit ``max(., tau)``: a normalisation with its own non-linearity (``activates``),
    per example and channel, in float32."""

    epsilon: float = 1e-5
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    dtype: Dtype = jnp.float32

    activates: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        tau = self.param("tau", nn.initializers.zeros, (features,), jnp.float32)
        x32 = x.astype(statistics_dtype(x.dtype))
        ms = jnp.mean(jnp.square(x32), axis=tuple(range(1, x.ndim - 1)), keepdims=True)
        y = x32 * jax.lax.rsqrt(ms + self.epsilon) * scale + bias
        return jnp.maximum(y, tau).astype(self.dtype)


NORM_LAYERS = ("batch", "group", "evonorm", "frn")


def norm(
    kind: str = "batch",
    *,
    axis_name: str | None = None,
    dtype: Dtype = jnp.float32,
    impl: Impl = "plain",
) -> Callable[..., nn.Module]:
    """The one norm factory: ``norm(kind, ...)(name=..., scale_init=...)`` makes a
    :class:`BatchNorm` (``"batch"``), a :class:`GroupNorm` (``"group"``), an
    :class:`EvoNormS0` (``"evonorm"``) or a :class:`FilterResponseNormTLU` (``"frn"``), all
    called as ``(x, train)``. The last two apply their own non-linearity (see
    :func:`norm_act`). ``axis_name`` and ``impl`` concern BatchNorm only: the others hold
    per-example statistics, in plain XLA."""
    if kind == "group":
        return functools.partial(GroupNorm, dtype=dtype)
    if kind == "batch":
        return functools.partial(BatchNorm, axis_name=axis_name, dtype=dtype, impl=impl)
    if kind == "evonorm":
        return functools.partial(EvoNormS0, dtype=dtype)
    if kind == "frn":
        return functools.partial(FilterResponseNormTLU, dtype=dtype)
    *names, last = map(repr, NORM_LAYERS)
    raise ValueError(f"norm_layer must be {', '.join(names)} or {last}, not {kind!r}")


def norm_act(layer: nn.Module, x: jax.Array, train: bool) -> jax.Array:
    """timm's norm-act layer: ``layer`` (made by :func:`norm`), then a ReLU unless the layer
    carries its own non-linearity (EvoNorm, FRN's TLU)."""
    y = layer(x, train)
    return y if getattr(layer, "activates", False) else nn.relu(y)


def blur_pool(x: jax.Array, stride: int = 2) -> jax.Array:
    """timm's ``BlurPool2d`` (Zhang, "Making Convolutional Networks Shift-Invariant Again"):
    reflect-pad by 1, blur each channel with the binomial filter [1, 2, 1] x [1, 2, 1] / 16,
    subsample by ``stride``. The filter is fixed (no parameters); written as two separable
    passes of strided slices."""
    h, w = x.shape[1:3]
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    rows = (x[:, 0:h:stride] + 2 * x[:, 1 : h + 1 : stride] + x[:, 2 : h + 2 : stride]) / 4
    return (rows[:, :, 0:w:stride] + 2 * rows[:, :, 1 : w + 1 : stride]
            + rows[:, :, 2 : w + 2 : stride]) / 4  # fmt: skip


def anti_alias(kind: str, x: jax.Array, stride: int = 2) -> jax.Array:
    """timm's ``aa_layer`` at a strided layer: ``"avg"`` (``nn.AvgPool2d(stride)``: timm's
    ``resnetaa*``, floor mode) or ``"blur"`` (:func:`blur_pool`: ``resnetblur*``)."""
    if kind == "blur":
        return blur_pool(x, stride)
    if kind == "avg":
        return nn.avg_pool(x, (stride, stride), (stride, stride))
    raise ValueError(f"aa_layer must be None, 'avg' or 'blur', not {kind!r}")


def drop_path(module: nn.Module, x: jax.Array, rate: float, train: bool) -> jax.Array:
    """timm's ``DropPath`` (stochastic depth) on a residual branch ``x`` inside ``module``: in
    training each example's branch is zeroed with probability ``rate`` and the kept ones
    scaled by 1 / (1 - rate) (needs a ``'dropout'`` rng); the identity in evaluation."""
    if not train or rate == 0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (x.shape[0], 1, 1, 1))
    return x * (mask / keep).astype(x.dtype)


def make_divisible(value: float, divisor: int = 8) -> int:
    """timm's channel rounding: the nearest multiple of ``divisor``, at least ``divisor``."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


def statistics_dtype(dtype: Dtype) -> jnp.dtype:
    """The dtype normalisation statistics are taken in: float32, or wider for wider input."""
    return jnp.promote_types(dtype, jnp.float32)


def statistics_count(x: jax.Array, axis_name: str | None) -> int:
    """How many values each channel's statistics are taken over (all devices on the axis)."""
    devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
    return math.prod(x.shape[:-1]) * devices


def affine_coefficients(scale, bias, mean, var, epsilon):
    """``(mul, add)`` with ``bn(x) = x * mul + add``: BatchNorm's normalisation as an affine map."""
    mul = scale * jax.lax.rsqrt(var + epsilon)
    return mul, bias - mean * mul


def affine(x, scale, bias, mean, var, epsilon, dtype):
    """``(x - mean) * scale / sqrt(var + eps) + bias``, folded into one multiply-add."""
    mul, add = affine_coefficients(scale, bias, mean, var, epsilon)
    return (x * mul.astype(dtype) + add.astype(dtype)).astype(dtype)


def batch_norm_plain(x, scale, bias, epsilon, axis_name, dtype):
    """Training-mode BatchNorm as written in the textbook; autodiff takes the gradient."""
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(statistics_dtype(x.dtype))
    mean = jnp.mean(x32, axes)
    # Two-pass variance: E[(x - mean)^2], as precise as torch's.
    var = jnp.mean(jnp.square(x32 - mean), axes)
    mean, var = global_moments(mean, var, axis_name)
    return affine(x, scale, bias, mean, var, epsilon, dtype), mean, var


def global_moments(
    mean: jax.Array, var: jax.Array, axis_name: str | None
) -> tuple[jax.Array, jax.Array]:
    """The global batch's mean and biased variance from each device's own, in one all-reduce.

    Each device puts its ``(mean, var)`` pair in its own slot of a ``[devices, 2, C]`` array
    and one ``psum`` gives every device every pair (a synced BatchNorm costs one
    latency-bound all-reduce each way, not two dependent ones). The pairs are combined
    exactly, as torch's SyncBatchNorm combines them (Chan et al.): the mean of the variances
    plus the variance of the means, both two-pass; ``E[var + mean**2] - mean**2`` cancelled
    where a channel's mean is large against its spread. Every device holds the same number of
    values, so plain averages are the global ones.
    """
    if axis_name is None:
        return mean, var
    slots = jnp.zeros((jax.lax.axis_size(axis_name), 2, *mean.shape), mean.dtype)
    slots = slots.at[jax.lax.axis_index(axis_name)].set(jnp.stack([mean, var]))
    means, variances = jnp.moveaxis(jax.lax.psum(slots, axis_name), 1, 0)
    mean = jnp.mean(means, axis=0)
    return mean, jnp.mean(variances, axis=0) + jnp.mean(jnp.square(means - mean), axis=0)


def max_pool(
    x: jax.Array, kernel_size: int, stride: int, padding: int, impl: Impl = "plain"
) -> jax.Array:
    """``torch.nn.MaxPool2d`` with explicit symmetric padding (padded with -inf, as torch).

    The gradient goes to the first maximum of each window in row-major order, as torch's.
    """
    return kernels(impl).max_pool(x, kernel_size, stride, padding)


def max_pool_plain(x: jax.Array, kernel_size: int, stride: int, padding: int) -> jax.Array:
    """Max pooling as ``reduce_window``, differentiated by autodiff."""
    return nn.max_pool(
        x,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
    )


def conv_plain(lhs, rhs, window_strides, padding, **options) -> jax.Array:
    """``lax.conv_general_dilated``. A grouped convolution whose batch is sharded over explicit
    mesh axes (``jax.make_mesh``'s default) runs per shard under ``jax.shard_map``: XLA's
    partitioner would otherwise gather the whole batch on every device for it
    (openxla/xla#47945), where an ungrouped one stays split. The same numbers either way."""
    conv = functools.partial(jax.lax.conv_general_dilated, window_strides=window_strides,
                             padding=padding, **options)  # fmt: skip
    axes = (
        _explicit_batch_axes(lhs, rhs, options) if options.get("feature_group_count", 1) > 1 else ()
    )
    if not axes:
        return conv(lhs, rhs)
    spec = P(axes)
    return jax.shard_map(conv, in_specs=(spec, P()), out_specs=spec, axis_names=set(axes))(lhs, rhs)


def _explicit_batch_axes(lhs, rhs, options) -> tuple[str, ...]:
    """The explicit mesh axes the leading (batch) dimension of ``lhs`` is sharded over."""
    numbers = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, options.get("dimension_numbers"))
    sharding = getattr(jax.typeof(lhs), "sharding", None)
    mesh, spec = getattr(sharding, "mesh", None), getattr(sharding, "spec", None)
    if numbers.lhs_spec[0] != 0 or mesh is None or mesh.empty or not spec or spec[0] is None:
        return ()
    axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    kinds = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
    if any(kinds[axis] != jax.sharding.AxisType.Explicit for axis in axes):
        return ()
    return axes


_KERNELS["plain"] = Kernels(conv_plain, batch_norm_plain, max_pool_plain)


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """``torch.nn.AdaptiveAvgPool2d`` for NHWC input, any input size.

    Output cell ``i`` averages input rows ``floor(i*H/out) .. ceil((i+1)*H/out)``, as torch does,
    written as two small averaging matrices (static, built at trace time).
    """
    h, w = x.shape[1:3]
    oh, ow = output_size
    if (h, w) == (oh, ow):
        return x
    if (oh, ow) == (1, 1):
        return jnp.mean(x, axis=(1, 2), keepdims=True)
    ph = jnp.asarray(_pool_matrix(h, oh), x.dtype)
    pw = jnp.asarray(_pool_matrix(w, ow), x.dtype)
    return jnp.einsum("ih,nhwc,jw->nijc", ph, x, pw)


def _pool_matrix(size: int, out: int) -> np.ndarray:
    m = np.zeros((out, size), np.float32)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def torch_flatten(x: jax.Array) -> jax.Array:
    """Flatten NHWC features in torch's NCHW order, so a following Linear ports unchanged."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
