"""Python functions as XLA:CPU FFI custom-call targets, through ``ctypes`` (no compiler).

:func:`register` wraps ``fn(operands, results, attribute)`` (the operands' and results' data
pointers, and the call's one int64-array attribute) in an ``XLA_FFI_Handler`` and registers
it with ``jax.ffi.register_ffi_target``; ``jax.ffi.ffi_call(name, ...)(*arrays, attr=...)``
then runs it inside a jitted program. An exception in ``fn`` becomes an XLA error, raised in
JAX with its message. The structs mirror ``xla/ffi/api/c_api.h``.
"""

from __future__ import annotations

import ctypes
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
        ("future", _P),
    ]


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
            attr = frame.attrs.items[0].contents
            fn(_pointers(frame.args), _pointers(frame.rets), tuple(attr.data[: attr.size]))
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
