"""oneDNN convolutions for XLA:CPU, called through the XLA FFI.

XLA:CPU's convolutions run well short of PyTorch's on the backward pass (the side-by-side
bench, ``python -m bench``, shows by how much). PyTorch's CPU convolutions are oneDNN's, so
this module runs the same oneDNN kernels inside the jitted XLA program:
:func:`conv_general_dilated` is ``lax.conv_general_dilated`` (NHWC/HWIO, float32) whose
forward, input gradient and kernel gradient are three XLA FFI custom calls. The handlers are
``ctypes`` callbacks into ``libdnnl`` (the ``onednn-cpu-gomp`` wheel, the ``[cpu]`` extra),
so nothing is compiled at install time.

Primitives are created once per shape (and per call running at the same time) and pooled.
Weights are reordered between XLA's HWIO layout and the blocked layout oneDNN picks, inside
the call. On an AVX-512 CPU the results equal PyTorch's to the bit (same kernels, same
summation order); the kernel gradient's summation order depends on the thread count
(:func:`threads`).

``RESNET_FLAX_ONEDNN=0`` turns this off (the CPU kernels then use XLA's convolutions);
``RESNET_FLAX_ONEDNN=/path/libdnnl.so.3`` picks a library. Differentiable once (the train step
needs no more), and neither exportable nor partitioned automatically
(:mod:`resnet_flax.cpu.guard` says so when asked); ``impl="plain"`` does all of that.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from resnet_flax.cpu import jax_compat, xla_ffi
from resnet_flax.cpu.guard import ffi_operand

ENV = "RESNET_FLAX_ONEDNN"
THREADS_ENV = "RESNET_FLAX_ONEDNN_THREADS"
# Forward, input gradient, kernel gradient: each call's operands and its result, in the order
# XLA passes them, named as oneDNN's forward convolution names them. A forward call with post-ops
# (:func:`conv_forward`) also takes the bias and, for a sum, the buffer it adds to in place.
OPERANDS = {
    "fwd": ("src", "w", "dst"),
    "bwd_data": ("dst", "w", "src"),
    "bwd_weights": ("src", "dst", "w"),
}
_P = ctypes.c_void_p
_Dims = ctypes.c_int64 * 12

# oneDNN 3.x C API constants (dnnl_types.h).
_F32, _FORMAT_ANY, _CPU, _ELTWISE_RELU = 3, 1, 1, 0x20
_FORWARD_TRAINING, _FORWARD_INFERENCE = 64, 96
_CONVOLUTION_DIRECT, _SCRATCHPAD_USER, _IN_ORDER = 1, 1, 1
_Q_WEIGHTS, _Q_DIFF_WEIGHTS, _Q_SCRATCHPAD = 131, 132, 136
_SRC, _DST, _WEIGHTS, _BIAS, _SCRATCHPAD = 1, 17, 33, 41, 80
_DIFF_SRC, _DIFF_DST, _DIFF_WEIGHTS = 129, 145, 161


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _P)]


@functools.cache
def library() -> ctypes.CDLL | None:
    """``libdnnl`` (oneDNN 3.x), or ``None`` when it is missing or ``RESNET_FLAX_ONEDNN=0``."""
    setting = os.environ.get(ENV, "")
    if setting == "0":
        return None
    paths = [setting] if setting else [os.path.join(sys.prefix, "lib", "libdnnl.so.3")]
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.dnnl_version.restype = ctypes.POINTER(ctypes.c_int * 3)  # major, minor, patch
        if lib.dnnl_version().contents[0] == 3:
            _declare(lib)
            return lib
    if setting:
        raise OSError(f"{ENV}={setting!r}: no oneDNN 3.x library there; unset it or set it to 0")
    return None


def version() -> str | None:
    """The loaded oneDNN's version, ``"major.minor.patch"``, or ``None`` without one."""
    lib = library()
    return None if lib is None else ".".join(str(v) for v in lib.dnnl_version().contents[:3])


def available() -> bool:
    """Whether the CPU convolutions can run through oneDNN here: the library is loaded and
    this jaxlib's FFI fits :mod:`xla_ffi`'s structs (checked once; if not, one warning, and
    the convolutions are XLA's own)."""
    return library() is not None and _ffi_fits()


@functools.cache
def _ffi_fits() -> bool:
    problem = xla_ffi.incompatibility()
    if problem is not None:
        warnings.warn(
            f"resnet_flax: oneDNN's CPU convolutions are off, XLA's own run instead: jaxlib "
            f"{jaxlib.__version__} does not fit resnet_flax.cpu.xla_ffi: {problem}. Set "
            f"{ENV}=0 to skip this check.",
            RuntimeWarning,
            stacklevel=3,
        )
    return problem is None


def _declare(lib: ctypes.CDLL) -> None:
    lib.dnnl_primitive_desc_query_md.restype = _P
    lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
    lib.dnnl_memory_desc_get_size.argtypes = [_P]
    lib.dnnl_memory_desc_equal.argtypes = [_P, _P]
    lib.dnnl_primitive_desc_query_md.argtypes = [_P, ctypes.c_int, ctypes.c_int]
    lib.dnnl_memory_set_data_handle.argtypes = [_P, _P]


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"oneDNN {what} failed with status {status}")


# --- Geometry ---------------------------------------------------------------------------------

# One int64 vector per call describes the convolution; it is the custom call's only attribute
# and the key of the primitive cache. The last three are the forward's post-ops (0 or 1 each):
# add a bias, add the output buffer's previous contents (a residual, in place), apply ReLU.
# fmt: off
FIELDS = ("n", "h", "w", "ci", "kh", "kw", "co", "oh", "ow",  # shapes, NHWC in and out
          "sh", "sw", "pt", "pb", "pl", "pr", "dh", "dw", "groups",  # strides, padding, dilation
          "bias", "sum", "relu")  # forward post-ops
# fmt: on


def _desc(lib: ctypes.CDLL, dims: Sequence[int], strides: Sequence[int] | None) -> _P:
    """A float32 memory descriptor: the given strides, or ``None`` for format ``any`` (the
    primitive picks its layout)."""
    md = _P()
    if strides is None:
        status = lib.dnnl_memory_desc_create_with_tag(
            ctypes.byref(md), len(dims), _Dims(*dims), _F32, _FORMAT_ANY
        )
    else:
        status = lib.dnnl_memory_desc_create_with_strides(
            ctypes.byref(md), len(dims), _Dims(*dims), _F32, _Dims(*strides)
        )
    _check(status, "memory descriptor")
    return md


def _nhwc(lib: ctypes.CDLL, n: int, c: int, h: int, w: int) -> _P:
    """Activations as XLA lays them out; oneDNN's dims are always ``(N, C, H, W)``."""
    return _desc(lib, (n, c, h, w), (h * w * c, 1, w * c, c))


def _weights(lib: ctypes.CDLL, g: dict, any_format: bool) -> _P:
    """The kernel as XLA lays it out (HWIO, ``O = group * co/groups + o``), or format ``any``."""
    kh, kw, co, groups = g["kh"], g["kw"], g["co"], g["groups"]
    cig, cog = g["ci"] // groups, co // groups
    if groups == 1:
        dims, strides = (co, cig, kh, kw), (1, co, kw * cig * co, cig * co)
    else:
        dims, strides = (groups, cog, cig, kh, kw), (cog, 1, co, kw * cig * co, cig * co)
    return _desc(lib, dims, None if any_format else strides)


class _Plan:
    """One convolution direction for one geometry, with its memory objects and stream; run by
    one call at a time (:class:`_Runtime` pools them)."""

    def __init__(self, kind: str, g: dict, lib: ctypes.CDLL, engine: _P):
        self.lib, self.engine, self.kind = lib, engine, kind
        self.operands = _operand_names(kind, g)  # the names of an FFI call's buffers, in order
        self.steps: list[tuple[_P, ctypes.Array]] = []  # (primitive, its arguments), in order
        self.buffers: list[np.ndarray] = []  # reordered weights and scratchpads, kept alive
        self.stream = _P()  # in order; a plan runs on one thread at a time
        _check(lib.dnnl_stream_create(ctypes.byref(self.stream), engine, _IN_ORDER), "stream")
        attr = _P()
        _check(lib.dnnl_primitive_attr_create(ctypes.byref(attr)), "attr")
        _check(lib.dnnl_primitive_attr_set_scratchpad_mode(attr, _SCRATCHPAD_USER), "attr")
        if g["sum"] or g["relu"]:
            post_ops = _post_ops(lib, g)
            _check(lib.dnnl_primitive_attr_set_post_ops(attr, post_ops), "post-ops")
            _check(lib.dnnl_post_ops_destroy(post_ops), "post-ops")  # attr keeps a copy
        src = _nhwc(lib, g["n"], g["ci"], g["h"], g["w"])
        dst = _nhwc(lib, g["n"], g["co"], g["oh"], g["ow"])
        bias = _desc(lib, (g["co"],), (1,)) if g["bias"] else None
        user_w, any_w = _weights(lib, g, False), _weights(lib, g, True)
        geometry = (
            _Dims(g["sh"], g["sw"]),
            _Dims(g["dh"] - 1, g["dw"] - 1),
            _Dims(g["pt"], g["pl"]),
            _Dims(g["pb"], g["pr"]),
        )
        prop = _FORWARD_INFERENCE if kind == "fwd" else _FORWARD_TRAINING
        fwd = _P()
        _check(
            lib.dnnl_convolution_forward_primitive_desc_create(
                ctypes.byref(fwd),
                engine,
                prop,
                _CONVOLUTION_DIRECT,
                src,
                any_w,
                bias,
                dst,
                *geometry,
                attr,
            ),
            "convolution forward",
        )
        # Memory objects start without data; each call points them at XLA's buffers.
        mds = {"src": src, "dst": dst, "w": user_w} | ({"bias": bias} if bias else {})
        self.io = {name: self._memory(md) for name, md in mds.items()}
        if kind == "fwd":
            pd = fwd
            w = self._weights_in(pd, user_w)
            args = [(_SRC, self.io["src"]), (_WEIGHTS, w), (_DST, self.io["dst"])]
            self._add(pd, args + ([(_BIAS, self.io["bias"])] if bias else []))
        elif kind == "bwd_data":
            pd = _P()
            _check(
                lib.dnnl_convolution_backward_data_primitive_desc_create(
                    ctypes.byref(pd),
                    engine,
                    _CONVOLUTION_DIRECT,
                    src,
                    any_w,
                    dst,
                    *geometry,
                    fwd,
                    attr,
                ),
                "convolution backward data",
            )
            w = self._weights_in(pd, user_w)
            self._add(pd, [(_DIFF_DST, self.io["dst"]), (_WEIGHTS, w), (_DIFF_SRC, self.io["src"])])
        else:
            pd = _P()
            _check(
                lib.dnnl_convolution_backward_weights_primitive_desc_create(
                    ctypes.byref(pd),
                    engine,
                    _CONVOLUTION_DIRECT,
                    src,
                    any_w,
                    None,
                    dst,
                    *geometry,
                    fwd,
                    attr,
                ),
                "convolution backward weights",
            )
            chosen = _P(lib.dnnl_primitive_desc_query_md(pd, _Q_DIFF_WEIGHTS, 0))
            same = lib.dnnl_memory_desc_equal(chosen, user_w)
            dw = self.io["w"] if same else self._memory(chosen, allocate=True)
            self._add(
                pd, [(_SRC, self.io["src"]), (_DIFF_DST, self.io["dst"]), (_DIFF_WEIGHTS, dw)]
            )
            if not same:
                self._add(self._reorder(chosen, user_w), [(_SRC, dw), (_DST, self.io["w"])])

    def _memory(self, md: _P, allocate: bool = False) -> _P:
        mem = _P()
        buffer = None
        if allocate:
            buffer = np.empty(self.lib.dnnl_memory_desc_get_size(md), np.uint8)
            self.buffers.append(buffer)
        handle = _P(buffer.ctypes.data) if buffer is not None else _P()
        _check(self.lib.dnnl_memory_create(ctypes.byref(mem), md, self.engine, handle), "memory")
        return mem

    def _reorder(self, src: _P, dst: _P) -> _P:
        pd = _P()
        _check(
            self.lib.dnnl_reorder_primitive_desc_create(
                ctypes.byref(pd), src, self.engine, dst, self.engine, None
            ),
            "reorder",
        )
        return pd

    def _weights_in(self, pd: _P, user_w: _P) -> _P:
        """The weights memory ``pd`` reads: the user's, or a reordered copy made each call."""
        chosen = _P(self.lib.dnnl_primitive_desc_query_md(pd, _Q_WEIGHTS, 0))
        if self.lib.dnnl_memory_desc_equal(chosen, user_w):
            return self.io["w"]
        w = self._memory(chosen, allocate=True)
        self._add(self._reorder(user_w, chosen), [(_SRC, self.io["w"]), (_DST, w)])
        return w

    def _add(self, pd: _P, args: list[tuple[int, _P]]) -> None:
        lib = self.lib
        scratch = _P(lib.dnnl_primitive_desc_query_md(pd, _Q_SCRATCHPAD, 0))
        if scratch.value and lib.dnnl_memory_desc_get_size(scratch):
            args = [*args, (_SCRATCHPAD, self._memory(scratch, allocate=True))]
        primitive = _P()
        _check(lib.dnnl_primitive_create(ctypes.byref(primitive), pd), "primitive")
        packed = (_ExecArg * len(args))(*[_ExecArg(arg, mem) for arg, mem in args])
        self.steps.append((primitive, packed))

    def run(self, pointers: dict[str, int]) -> None:
        """Run on XLA's buffers: ``pointers`` maps ``src``, ``w``, ``dst`` (and ``bias``) to
        their data."""
        lib = self.lib
        for name, memory in self.io.items():
            _check(lib.dnnl_memory_set_data_handle(memory, _P(pointers[name])), "set data handle")
        for primitive, args in self.steps:
            _check(lib.dnnl_primitive_execute(primitive, self.stream, len(args), args), "execute")
        _check(lib.dnnl_stream_wait(self.stream), "stream wait")


def _post_ops(lib: ctypes.CDLL, g: dict) -> _P:
    """The forward's post-ops, applied in this order after the bias: sum, ReLU."""
    post_ops = _P()
    _check(lib.dnnl_post_ops_create(ctypes.byref(post_ops)), "post-ops")
    if g["sum"]:  # dst = conv + bias + dst, in float32 (data type undef: dst's own)
        _check(lib.dnnl_post_ops_append_sum(post_ops, ctypes.c_float(1.0), 0, 0), "sum post-op")
    if g["relu"]:
        status = lib.dnnl_post_ops_append_eltwise(
            post_ops, _ELTWISE_RELU, ctypes.c_float(0.0), ctypes.c_float(0.0)
        )
        _check(status, "ReLU post-op")
    return post_ops


# --- Runtime: engine, per-thread streams and plans, FFI handlers -------------------------------


class _Runtime:
    """The engine, and the plans: a pool per (kind, geometry) of plans not running now.

    A call takes a plan from its pool (or builds one) and puts it back when done, so the plans
    are as many as the calls that ever ran at once. Not a ``threading.local``: XLA runs the
    handlers on threads of its own, which Python knows only for the length of one callback (a
    thread state made and dropped each time), so a per-thread cache was empty at every call,
    and each call built a plan that was never freed.
    """

    def __init__(self, lib: ctypes.CDLL, threads: int):
        self.lib, self.threads = lib, threads
        self.engine = _P()
        _check(lib.dnnl_engine_create(ctypes.byref(self.engine), _CPU, 0), "engine")
        self.idle: dict[tuple, list[_Plan]] = {}
        self.built = 0  # plans built so far (tests bound it)
        self.lock = threading.Lock()
        self.omp_set_num_threads = ctypes.CDLL("libgomp.so.1").omp_set_num_threads

    @contextlib.contextmanager
    def plan(self, kind: str, geometry: tuple[int, ...]) -> Iterator[_Plan]:
        key = (kind, geometry)
        with self.lock:
            idle = self.idle.setdefault(key, [])
            plan = idle.pop() if idle else None
            self.built += plan is None
        if plan is None:
            g = dict(zip(FIELDS, geometry, strict=True))
            plan = _Plan(kind, g, self.lib, self.engine)
        try:
            yield plan
        finally:
            with self.lock:
                idle.append(plan)

    def run(self, kind: str, operands: list[int], results: list[int], geometry: tuple) -> None:
        """One FFI call of ``kind`` on XLA's buffers."""
        # Before the plan is built: oneDNN splits a primitive's work by the thread count it sees
        # when it creates it, and XLA's threads start with OpenMP's default count. Set after,
        # the summation order of a kernel gradient depended on which thread built its plan.
        self.omp_set_num_threads(self.threads)
        with self.plan(kind, geometry) as plan:
            plan.run(dict(zip(plan.operands, [*operands, *results], strict=True)))


def _operand_names(kind: str, g: dict) -> tuple[str, ...]:
    """The call's operands then its result; a sum's residual is the result's buffer (aliased)."""
    *operands, result = OPERANDS[kind]
    extra = ("bias",) * g["bias"] + ("residual",) * g["sum"]
    return (*operands, *extra, result)


def threads() -> int:
    """oneDNN threads per convolution: ``RESNET_FLAX_ONEDNN_THREADS``, else this process's
    cores shared among its CPU devices (which run their convolutions at the same time)."""
    setting = os.environ.get(THREADS_ENV)
    if setting:
        if not setting.isdigit() or int(setting) < 1:
            raise ValueError(f"{THREADS_ENV}={setting!r}: expected a positive integer")
        return int(setting)
    return max(1, len(os.sched_getaffinity(0)) // jax.local_device_count("cpu"))


@functools.cache
def _runtime() -> _Runtime:
    """The oneDNN engine and the three FFI targets, registered once per process."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"oneDNN is not available ({ENV}={os.environ.get(ENV, '')!r})")
    runtime = _Runtime(lib, threads())
    for kind in OPERANDS:
        xla_ffi.register(target(kind), functools.partial(runtime.run, kind))
    atexit.register(_finish_dispatched_work)
    return runtime


def _finish_dispatched_work() -> None:
    """At exit, wait for the programs still running: their oneDNN calls are Python callbacks,
    which cannot run once the interpreter has begun shutting down (the process would hang).
    A CPU device runs programs in the order they were dispatched, so one more, awaited on each
    device, comes after them all."""
    for device in jax.local_devices(backend="cpu"):
        jax.block_until_ready(jax.device_put(np.float32(0), device) + 1)


def target(kind: str) -> str:
    """The FFI target name of ``kind`` (a key of :data:`OPERANDS`)."""
    return f"resnet_flax.cpu.onednn.{kind}"


# --- The JAX-facing convolution ------------------------------------------------------------------

_NHWC_DIMENSION_NUMBERS = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def supports(lhs, rhs, padding, *, lhs_dilation=None, dimension_numbers=None, **options) -> bool:
    """Whether :func:`conv_general_dilated` takes this ``lax.conv_general_dilated`` call:
    oneDNN is loaded, float32, 2-D NHWC/HWIO, explicit padding, no input dilation."""
    if not available() or lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
        return False
    if lhs.ndim != 4 or isinstance(padding, str) or any(d != 1 for d in lhs_dilation or (1, 1)):
        return False
    if options.get("batch_group_count", 1) != 1 or options.get("preferred_element_type"):
        return False
    numbers = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return numbers == _NHWC_DIMENSION_NUMBERS


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    *,
    rhs_dilation: Sequence[int] | None = None,
    feature_group_count: int = 1,
    **options,
) -> jax.Array:
    """``lax.conv_general_dilated`` run by oneDNN, for the calls :func:`supports` accepts.

    Inside ``shard_map`` both operands must vary over the same mesh axes (``jax.lax.pcast``
    the kernel to the activations' axes; its transpose then sums the kernel's gradient).

    ``precision`` is ignored: oneDNN computes in float32.
    """
    if not supports(lhs, rhs, padding, **options):
        raise ValueError(
            f"oneDNN convolution needs float32 NHWC/HWIO inputs with explicit padding, got "
            f"{lhs.dtype}{lhs.shape} * {rhs.dtype}{rhs.shape}, padding {padding}, {options}; "
            "use jax.lax.conv_general_dilated for this one"
        )
    geometry = _geometry(lhs.shape, rhs.shape, window_strides, padding, rhs_dilation,
                         feature_group_count)  # fmt: skip
    return _conv(lhs, rhs, geometry)


def conv_forward(
    lhs: jax.Array,
    rhs: jax.Array,
    bias: jax.Array,
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    *,
    residual: jax.Array | None = None,
    relu: bool = False,
    rhs_dilation: Sequence[int] | None = None,
    feature_group_count: int = 1,
) -> jax.Array:
    """``relu(conv(lhs, rhs) + bias + residual)`` as one oneDNN call, for inference.

    The bias, the residual sum and the ReLU are oneDNN post-ops, applied to each output block
    while it is still in registers; the residual's buffer becomes the output (XLA copies it
    first if it is used again). Same float32 operations, in the same order, as the separate
    ``conv``, ``+ bias``, ``+ residual``, ``max(0, .)``. Not differentiable: the forward
    only, for the folded eval path (:mod:`resnet_flax.cpu.postops`).
    """
    layout = {"dimension_numbers": ("NHWC", "HWIO", "NHWC")}
    if not supports(lhs, rhs, padding, **layout) or bias.shape != (rhs.shape[-1],):
        raise ValueError(
            f"oneDNN convolution needs float32 NHWC/HWIO inputs with explicit padding and a "
            f"bias per output channel, got {lhs.dtype}{lhs.shape} * {rhs.dtype}{rhs.shape}, "
            f"bias {bias.shape}, padding {padding}"
        )
    geometry = _geometry(lhs.shape, rhs.shape, window_strides, padding, rhs_dilation,
                         feature_group_count)  # fmt: skip
    return forward_with_post_ops(geometry, lhs, rhs, bias, residual, relu)


def forward_with_post_ops(
    geometry: Sequence[int],
    x: jax.Array,
    w: jax.Array,
    bias: jax.Array,
    residual: jax.Array | None = None,
    relu: bool = False,
) -> jax.Array:
    """:func:`conv_forward` for a convolution given by its attribute vector (:data:`FIELDS`),
    as a traced forward call carries it."""
    g = dict(zip(FIELDS, geometry, strict=True))
    g |= {"bias": 1, "sum": int(residual is not None), "relu": int(relu)}
    shape = (g["n"], g["oh"], g["ow"], g["co"])
    if residual is not None and residual.shape != shape:
        raise ValueError(f"residual of shape {residual.shape} for a conv output of {shape}")
    geometry = tuple(g[field] for field in FIELDS)
    operands = [x, w, bias.astype(jnp.float32)]
    if residual is None:
        return _call("fwd", geometry, shape, *operands)
    return _call("fwd", geometry, shape, *operands, residual.astype(jnp.float32), aliases={3: 0})


def _geometry(
    lhs_shape: Sequence[int],
    rhs_shape: Sequence[int],
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    rhs_dilation: Sequence[int] | None,
    groups: int,
) -> tuple[int, ...]:
    """The call's attribute vector (:data:`FIELDS`), without post-ops."""
    n, h, w, ci = lhs_shape
    kh, kw, _, co = rhs_shape
    sh, sw = window_strides
    (pt, pb), (pl, pr) = padding
    dh, dw = rhs_dilation or (1, 1)
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    g = dict(n=n, h=h, w=w, ci=ci, kh=kh, kw=kw, co=co, oh=oh, ow=ow, sh=sh, sw=sw,
             pt=pt, pb=pb, pl=pl, pr=pr, dh=dh, dw=dw, groups=groups)  # fmt: skip
    g |= {"bias": 0, "sum": 0, "relu": 0}
    return tuple(int(g[field]) for field in FIELDS)


def _call(
    kind: str, geometry: tuple[int, ...], shape: tuple[int, ...], *operands, aliases=None
) -> jax.Array:
    _runtime()
    operands = ffi_operand(*operands)  # refuses export, automatic partitioning, differentiation
    # Inside shard_map the result varies over the mesh axes its operands vary over.
    out = jax_compat.result_like(operands[0], shape, jnp.float32)
    call = jax.ffi.ffi_call(
        target(kind), out, vmap_method="sequential", input_output_aliases=aliases
    )
    return call(*operands, geometry=np.asarray(geometry, np.int64))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, w, geometry):
    g = dict(zip(FIELDS, geometry, strict=True))
    return _call("fwd", geometry, (g["n"], g["oh"], g["ow"], g["co"]), x, w)


def _conv_fwd(x, w, geometry):
    return _conv(x, w, geometry), (x, w)


def _conv_bwd(geometry, residuals, dy):
    x, w = residuals
    dx = _call("bwd_data", geometry, x.shape, dy, w)
    dw = _call("bwd_weights", geometry, w.shape, x, dy)
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)
