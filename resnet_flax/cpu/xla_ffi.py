"""Python functions as XLA:CPU FFI custom-call targets, through ``ctypes`` (no compiler).

:func:`register` wraps ``fn(operands, results, attribute)`` (the operands' and results' data
pointers, and the call's one int64-array attribute) in an ``XLA_FFI_Handler`` and registers
it with ``jax.ffi.register_ffi_target``; ``jax.ffi.ffi_call(name, ...)(*arrays, attr=...)``
then runs it inside a jitted program. An exception in ``fn`` becomes an XLA error, raised in
JAX with its message. The structs mirror ``xla/ffi/api/c_api.h``.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable

import jax

_P = ctypes.c_void_p
_EXECUTE = 3  # XLA_FFI_ExecutionStage_EXECUTE
_METADATA_EXTENSION = 1  # XLA_FFI_Extension_Metadata
_INTERNAL = 13  # XLA_FFI_Error_Code_INTERNAL
_ERROR_CREATE_SLOT = 6  # XLA_FFI_Error_Create's place (in pointers) in XLA_FFI_Api
API_VERSION = (0, 1)  # the FFI API version the handlers are written against

Target = Callable[[list[int], list[int], tuple[int, ...]], None]
# Every XLA FFI struct that can be extended opens with its size and its first extension.
_HEADER = [("struct_size", ctypes.c_size_t), ("ext", _P)]


class _ApiVersion(ctypes.Structure):
    _fields_ = [
        *_HEADER,
        ("major", ctypes.c_int),
        ("minor", ctypes.c_int),
    ]


class _Metadata(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("api_version", _ApiVersion),
        ("traits", ctypes.c_uint32),
    ]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("type", ctypes.c_int),
        ("next", _P),
        ("metadata", ctypes.POINTER(_Metadata)),
    ]


class _Buffer(ctypes.Structure):
    _fields_ = [
        *_HEADER,
        ("dtype", ctypes.c_int),
        ("data", _P),
        ("rank", ctypes.c_int64),
        ("dims", ctypes.POINTER(ctypes.c_int64)),
    ]


class _Buffers(ctypes.Structure):  # XLA_FFI_Args and XLA_FFI_Rets
    _fields_ = [
        *_HEADER,
        ("size", ctypes.c_int64),
        ("types", _P),
        ("items", ctypes.POINTER(ctypes.POINTER(_Buffer))),
    ]


class _Array(ctypes.Structure):
    _fields_ = [
        ("dtype", ctypes.c_int),
        ("size", ctypes.c_size_t),
        ("data", ctypes.POINTER(ctypes.c_int64)),
    ]


class _Attrs(ctypes.Structure):
    _fields_ = [
        *_HEADER,
        ("size", ctypes.c_int64),
        ("types", _P),
        ("names", _P),
        ("items", ctypes.POINTER(ctypes.POINTER(_Array))),
    ]


class _Api(ctypes.Structure):  # the opening of XLA_FFI_Api
    _fields_ = [*_HEADER, ("api_version", _ApiVersion)]


class _CallFrame(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("ext", ctypes.POINTER(_MetadataExtension)),
        ("api", ctypes.POINTER(_P)),
        ("ctx", _P),
        ("stage", ctypes.c_int),
        ("args", _Buffers),
        ("rets", _Buffers),
        ("attrs", _Attrs),
    ]  # (newer XLA appends fields; the probe checks the frame holds at least these)


class _ErrorArgs(ctypes.Structure):
    _fields_ = [
        *_HEADER,
        ("message", ctypes.c_char_p),
        ("errc", ctypes.c_int),
    ]


_HANDLER = ctypes.CFUNCTYPE(_P, ctypes.POINTER(_CallFrame))
_ERROR_CREATE = ctypes.CFUNCTYPE(_P, ctypes.POINTER(_ErrorArgs))
_handlers: list = []  # ctypes callbacks must outlive their registration


def _pointers(buffers: _Buffers) -> list[int]:
    return [buffers.items[i].contents.data for i in range(buffers.size)]


def register(name: str, fn: Target) -> None:
    """Make ``fn(operands, results, attribute)`` the CPU FFI target ``name``."""

    def execute(frame: _CallFrame) -> None:
        attr = frame.attrs.items[0].contents
        fn(_pointers(frame.args), _pointers(frame.rets), tuple(attr.data[: attr.size]))

    _register(name, execute)


def _register(name: str, execute: Callable[[_CallFrame], None]) -> None:
    def handle(frame_p):
        frame = frame_p.contents
        if frame.ext and frame.ext.contents.type == _METADATA_EXTENSION:
            # At registration XLA asks which API version the handler speaks.
            meta = frame.ext.contents.metadata.contents
            meta.api_version.struct_size = ctypes.sizeof(_ApiVersion)
            meta.api_version.major, meta.api_version.minor = API_VERSION
            meta.traits = 0
            return None
        if frame.stage != _EXECUTE:
            return None
        try:
            execute(frame)
            return None
        except Exception as e:  # noqa: BLE001 -- handed to XLA, which raises it in JAX
            create = _ERROR_CREATE(frame.api[_ERROR_CREATE_SLOT])
            message = f"{name}: {type(e).__name__}: {e}".encode()
            args = _ErrorArgs(ctypes.sizeof(_ErrorArgs), None, message, _INTERNAL)
            return create(ctypes.byref(args))

    handler = _HANDLER(handle)
    _handlers.append(handler)
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype, new_capsule.argtypes = ctypes.py_object, [_P, ctypes.c_char_p, _P]
    capsule = new_capsule(ctypes.cast(handler, _P), None, None)
    jax.ffi.register_ffi_target(name, capsule, platform="cpu")


_PROBE = "resnet_flax.cpu.xla_ffi.probe"
_F32 = 11  # XLA_FFI_DataType_F32
_PROBE_ATTR = (7, 11)


@functools.cache
def incompatibility() -> str | None:
    """Why this jaxlib's FFI does not fit the structs above, or ``None`` when it does.

    Checked at run time, once per process, by calling a probe target on a known operand and
    attribute and reading back what XLA passed: the API version, the call frame's size, and
    the operand's dtype, shape and the attribute as these structs see them. Run in a thread of
    its own, so that it executes even when asked during a trace.
    """
    result: list[str | None] = []
    thread = threading.Thread(target=lambda: result.append(_probe()))
    thread.start()
    thread.join()
    return result[0]


def _probe() -> str | None:
    import numpy as np

    seen: dict[str, object] = {}

    def execute(frame: _CallFrame) -> None:
        api = ctypes.cast(frame.api, ctypes.POINTER(_Api)).contents.api_version
        operand = frame.args.items[0].contents
        attr = frame.attrs.items[0].contents
        seen.update(
            api=(api.major, api.minor),
            frame_size=frame.struct_size,
            operand=(operand.dtype, tuple(operand.dims[i] for i in range(operand.rank))),
            attr=tuple(attr.data[: attr.size]),
        )

    try:
        _register(_PROBE, execute)
        cpu = jax.local_devices(backend="cpu")[0]
        x = jax.device_put(np.zeros((2, 3), np.float32), cpu)
        call = jax.ffi.ffi_call(_PROBE, jax.ShapeDtypeStruct((), np.int32))
        attr = np.asarray(_PROBE_ATTR, np.int64)
        jax.block_until_ready(jax.jit(lambda v: call(v, attr=attr))(x))
    except Exception as e:  # noqa: BLE001 -- any failure means: do not use these structs
        return f"the FFI probe failed ({type(e).__name__}: {e})"
    expected = {
        "api": seen.get("api", (None,))[0] == API_VERSION[0] and seen["api"][1] >= API_VERSION[1],
        "frame_size": seen.get("frame_size", 0) >= ctypes.sizeof(_CallFrame),
        "operand": seen.get("operand") == (_F32, (2, 3)),
        "attr": seen.get("attr") == _PROBE_ATTR,
    }
    wrong = [key for key, ok in expected.items() if not ok]
    return f"XLA's FFI passed {seen} (unexpected: {', '.join(wrong)})" if wrong else None
