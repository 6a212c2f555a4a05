"""Read and write PyTorch ``.pth`` checkpoints and safetensors files without torch.

``read_pth`` parses torch's zip format (torch >= 1.6) with a restricted unpickler that only
accepts tensor-rebuild records, storage types and ``collections.OrderedDict``; any other global
raises ``UnsafeCheckpointError`` and no code from the file ever runs. Accepted layouts:

- a state_dict (mapping of tensors) at top level;
- a state_dict nested under ``state_dict``, ``model_state_dict`` or ``model`` (searched in that
  order, up to three levels deep), next to other plain entries such as ``epoch`` (and timm's
  training ``args``, read as an inert record);
- timm's exponential moving average next to it, ``state_dict_ema`` or ``model_ema``: loaded
  first, as timm's ``load_checkpoint(use_ema=True)`` does (``use_ema=False`` for the other),
  with a warning saying which was loaded;
- keys as stored: a prefix every key carries (DDP's ``module.``, Lightning's ``model.``) is
  the converter's to strip (``convert.load_torchvision``), which knows the model's keys.

What a file can make the reader allocate is bounded by what it holds: members must be stored
uncompressed (as torch writes them), a tensor may not hold more elements than its storage
past its offset (zero or overlapping strides cannot inflate it), and all the tensors together
at most twice the bytes of the file's storages (tensors that share a storage, such as tied
weights, are copied once each).

``write_pth`` emits the pickle opcodes itself, so ``torch.load(path, weights_only=True)`` can
read its output without torch being needed to write it.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from resnet_flax.io import paths

SAFETENSORS_SUFFIXES = (".safetensors",)
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_EMA_KEYS = ("state_dict_ema", "model_ema")  # timm's train.py writes the first
_ALIGN = 64  # torch aligns each storage's data to 64 bytes inside the zip
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_STORAGE_NAMES = {dtype: name for name, dtype in _STORAGE_DTYPES.items()}
_PARAMETER_REBUILDS = ("_rebuild_parameter", "_rebuild_parameter_with_state")
_RESAVE = "re-save just the weights with torch: torch.save(model.state_dict(), path)"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not a state_dict."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint's pickle references a global outside the tensor allowlist."""


class _Record:
    """What an ``argparse.Namespace`` unpickles to here: its attributes, no behaviour."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    dtype: np.dtype


@dataclass(frozen=True, slots=True)
class _Storage:
    flat: np.ndarray  # native byte order, one element per storage element


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds tensors (as numpy arrays) from a torch zip archive."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: str, byteorder: str) -> None:
        super().__init__(io.BytesIO(_read_stored(archive, prefix + "data.pkl", path)))
        self.archive, self.prefix, self.path, self.byteorder = archive, prefix, path, byteorder
        self.storages: dict[str, _Storage] = {}
        self._budget: int | None = None  # bytes the tensors may still take

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if module == "torch._utils" and name in _PARAMETER_REBUILDS:
            return lambda data, *_: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("argparse", "Namespace"):  # timm's training args
            return _Record
        raise UnsafeCheckpointError(
            f"{self.path}: refusing to load global '{module}.{name}': only tensors and state "
            f"dicts are read, no code from the file runs. If you trust the file, {_RESAVE}"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and _are_ints(pid[4])
        ):
            raise CheckpointError(f"{self.path}: unexpected persistent id {pid!r:.100}")
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            member = f"{self.prefix}data/{key}"
            raw = _read_stored(self.archive, member, self.path)
            itemsize = storage_type.dtype.itemsize
            if len(raw) < numel * itemsize:
                raise CheckpointError(
                    f"{self.path}: {member} has {len(raw)} bytes but needs {numel * itemsize}; "
                    "the file is truncated or corrupt, download or save it again"
                )
            order = "<" if self.byteorder == "little" else ">"
            ints = np.frombuffer(raw, f"{order}u{itemsize}", count=numel)
            flat = ints.astype(f"=u{itemsize}", copy=False).view(storage_type.dtype)
            self.storages[key] = _Storage(flat)
        return self.storages[key]

    def _rebuild_tensor(
        self, storage: Any, offset: Any, size: Any, stride: Any, *_: Any
    ) -> np.ndarray:
        """``torch._utils._rebuild_tensor_v2`` as a contiguous numpy copy of a strided view."""
        if not (
            isinstance(storage, _Storage)
            and isinstance(size, tuple)
            and isinstance(stride, tuple)
            and len(size) == len(stride)
            and _are_ints(offset, *size, *stride)
            and min((offset, *size, *stride)) >= 0
        ):
            raise CheckpointError(f"{self.path}: malformed tensor record {size!r:.60}")
        flat = storage.flat
        if 0 in size:
            return np.zeros(size, flat.dtype)
        needed = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        count = math.prod(size)
        if needed > flat.size or count > flat.size - offset:
            raise CheckpointError(
                f"{self.path}: a tensor of shape {size} with strides {stride} at offset "
                f"{offset} needs more than its storage's {flat.size} elements (zero or "
                f"overlapping strides); the file is corrupt or hostile, download or save it again"
            )
        if self._budget is None:
            stored = sum(i.compress_size for i in self.archive.infolist() if "/data/" in i.filename)
            self._budget = 2 * stored
        self._budget -= count * flat.itemsize
        if self._budget < 0:
            raise CheckpointError(
                f"{self.path}: its tensors would take more than twice the bytes of the data it "
                f"holds (storages shared by many tensors); the file is corrupt or hostile"
            )
        strides = tuple(s * flat.itemsize for s in stride)
        view = np.lib.stride_tricks.as_strided(flat[offset:], size, strides, writeable=False)
        return np.array(view, order="C")


def _read_stored(archive: zipfile.ZipFile, member: str, path: str) -> bytes:
    """A member's bytes; compressed ones (which torch never writes) are refused, so that a
    small file cannot inflate to gigabytes."""
    info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(
            f"{path}: {member} is compressed ({info.file_size} bytes from {info.compress_size}); "
            f"torch stores checkpoint members uncompressed, so this file was not written by "
            f"torch.save; re-save it with torch"
        )
    return archive.read(member)


def _are_ints(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or hasattr(value, "__array__") or _is_tensor(value)


def _is_tensor(value: Any) -> bool:
    return all(hasattr(value, method) for method in ("detach", "cpu", "numpy"))


def _to_numpy(value: Any) -> np.ndarray:
    """numpy, torch (without importing torch) or any ``__array__`` value as a numpy array."""
    if isinstance(value, np.ndarray):
        return value
    if _is_tensor(value):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bf16; f32 holds it exactly
            return value.float().numpy().astype(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)


def _to_state_dict(
    obj: Any,
    name: str,
    is_array: Callable[[Any], bool] = _is_array,
    use_ema: bool = True,
    depth: int = 0,
) -> dict[str, np.ndarray]:
    """Find the state_dict in ``obj`` (see the module docstring) as a dict of numpy arrays."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{name}: holds a {type(obj).__name__}, not a state_dict; {_RESAVE}")
    if not all(is_array(v) for v in obj.values()):
        found = [k for k in _EMA_KEYS + _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        ema = [k for k in found if k in _EMA_KEYS]
        plain = [k for k in found if k not in _EMA_KEYS]
        chosen = (ema if use_ema else []) + plain or ema
        if depth < 3 and chosen:
            if ema and plain:
                other = plain[0] if chosen[0] in _EMA_KEYS else ema[0]
                what = "the EMA weights" if chosen[0] in _EMA_KEYS else "the weights"
                switch = "use_ema=False" if chosen[0] in _EMA_KEYS else "use_ema=True"
                warnings.warn(
                    f"{name}: loaded {what} under {chosen[0]!r}; {switch} loads {other!r}.",
                    stacklevel=4,
                )
            return _to_state_dict(obj[chosen[0]], name, is_array, use_ema, depth + 1)
        bad = next(k for k, v in obj.items() if not is_array(v))
        raise CheckpointError(
            f"{name}: entry {bad!r} is {type(obj[bad]).__name__}, not a tensor, and no "
            f"state_dict was found under {_EMA_KEYS + _WRAPPER_KEYS}; {_RESAVE}"
        )
    if not obj or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{name}: expected a non-empty mapping of str keys to tensors")
    return {k: _to_numpy(v) for k, v in obj.items()}


def _check_file(path: str | os.PathLike) -> paths.Path:
    path = paths.as_path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a directory, not a weights file: name the .pth or .safetensors file "
            f"in it (a training run's checkpoints load with load_checkpoint)"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path")
    return path


def read_pth(path: str | os.PathLike, *, use_ema: bool = True) -> dict[str, np.ndarray]:
    """Read a torch zip-format checkpoint's state_dict as numpy arrays, without torch
    (``use_ema``: see the module docstring)."""
    path = _check_file(path)
    with path.open("rb") as file:  # a file object: the path may be remote
        return _read_pth_file(path, file, use_ema)


def _read_pth_file(path: paths.Path, file: BinaryIO, use_ema: bool) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(file):
        file.seek(0)
        if file.read(2) == b"\x80\x02":
            raise CheckpointError(
                f"{path}: legacy (torch < 1.6) format; re-save it with torch >= 1.6: "
                "torch.save(torch.load(old_path, weights_only=True), new_path)"
            )
        raise CheckpointError(f"{path}: not a zip checkpoint, or truncated; download it again")
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if not pickles:
                raise CheckpointError(
                    f"{path}: no data.pkl in the archive, so not a torch.save checkpoint; {_RESAVE}"
                )
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = "little"
            if prefix + "byteorder" in names:
                byteorder = _read_stored(archive, prefix + "byteorder", str(path))
                byteorder = byteorder.decode().strip()
                if byteorder not in ("little", "big"):
                    raise CheckpointError(f"{path}: unknown byteorder {byteorder!r}")
            obj = _RestrictedUnpickler(archive, prefix, str(path), byteorder).load()
    except CheckpointError:
        raise
    except Exception as error:  # zip CRC errors, broken pickles, malformed records
        raise CheckpointError(
            f"{path}: corrupt checkpoint ({type(error).__name__}: {error}); download or "
            "save it again"
        ) from error
    # Only arrays this module rebuilt count as tensors: never call methods of unpickled objects.
    return _to_state_dict(obj, str(path), lambda value: isinstance(value, np.ndarray), use_ema)


def _pickle_str(text: str) -> bytes:
    data = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _pickle_int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    data = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def _pickle_ints(values: tuple[int, ...]) -> bytes:
    return pickle.MARK + b"".join(_pickle_int(v) for v in values) + pickle.TUPLE


def _pickle_state_dict(arrays: dict[str, np.ndarray]) -> bytes:
    """Protocol-2 opcodes for ``OrderedDict(key=_rebuild_tensor_v2(storage i, ...))``."""
    ordered_dict = (
        pickle.GLOBAL + b"collections\nOrderedDict\n" + pickle.EMPTY_TUPLE + pickle.REDUCE
    )
    out = [pickle.PROTO + b"\x02", ordered_dict]
    for index, (key, array) in enumerate(arrays.items()):
        storage = _STORAGE_NAMES[array.dtype].encode()
        shape = array.shape
        strides = tuple(math.prod(max(n, 1) for n in shape[i + 1 :]) for i in range(len(shape)))
        out += [
            _pickle_str(key),
            pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.MARK,
            pickle.MARK + _pickle_str("storage") + pickle.GLOBAL + b"torch\n" + storage + b"\n",
            _pickle_str(str(index)) + _pickle_str("cpu") + _pickle_int(array.size),
            pickle.TUPLE + pickle.BINPERSID + _pickle_int(0),
            _pickle_ints(array.shape) + _pickle_ints(strides) + pickle.NEWFALSE + ordered_dict,
            pickle.TUPLE + pickle.REDUCE + pickle.SETITEM,
        ]
    return b"".join(out) + pickle.STOP


def _write_aligned(archive: zipfile.ZipFile, file: BinaryIO, name: str, data: bytes) -> None:
    """Add a ZIP_STORED member whose data starts on a 64-byte boundary, padding the extra."""
    info = zipfile.ZipInfo(name)  # fixed 1980 timestamp: identical input, identical file
    zip64_extra = 20 if len(data) * 1.05 > zipfile.ZIP64_LIMIT else 0  # as zipfile decides
    header = 30 + len(name.encode()) + 4 + zip64_extra
    padding = -(file.tell() + header) % _ALIGN
    info.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
    archive.writestr(info, data)


def write_pth(path: str | os.PathLike, state_dict: Mapping[str, Any]) -> None:
    """Write ``state_dict`` as a checkpoint that ``torch.load(path, weights_only=True)`` reads."""
    arrays = {}
    for key, value in state_dict.items():
        array = np.asarray(_to_numpy(value), order="C")
        array = array.astype(array.dtype.newbyteorder("="), copy=False)
        if not isinstance(key, str) or array.dtype not in _STORAGE_NAMES:
            raise CheckpointError(
                f"{path}: cannot write entry {key!r} ({array.dtype}); keys must be str and "
                f"dtypes one of {sorted(str(d) for d in _STORAGE_NAMES)}"
            )
        arrays[key] = array
    with open(path, "wb") as file, zipfile.ZipFile(file, "w") as archive:
        _write_aligned(archive, file, "archive/data.pkl", _pickle_state_dict(arrays))
        _write_aligned(archive, file, "archive/byteorder", b"little")
        for index, array in enumerate(arrays.values()):
            little = array.view(f"u{array.itemsize}").astype(f"<u{array.itemsize}", copy=False)
            _write_aligned(archive, file, f"archive/data/{index}", little.tobytes())
        _write_aligned(archive, file, "archive/version", b"3\n")


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file as numpy arrays."""
    path = _check_file(path)
    try:
        if paths.is_local(path):
            return safetensors.numpy.load_file(path)
        return safetensors.numpy.load(path.read_bytes())
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path}: corrupt or truncated safetensors file ({error}); download or save it again"
        ) from error


def write_safetensors(path: str | os.PathLike, state_dict: Mapping[str, Any]) -> None:
    """Write ``state_dict`` (numpy, torch or jax arrays) as a ``.safetensors`` file."""
    arrays = {key: np.asarray(_to_numpy(value), order="C") for key, value in state_dict.items()}
    safetensors.numpy.save_file(arrays, path)


def read_state_dict(
    source: str | os.PathLike | Mapping[str, Any], *, use_ema: bool = True
) -> dict[str, np.ndarray]:
    """A state_dict from a checkpoint file or an in-memory mapping of arrays.

    A file is read by what it holds, whatever its name (timm's ``model_best.pth.tar`` is a
    torch zip): safetensors if its header says so, else a torch checkpoint. ``use_ema``: load
    the EMA weights of a checkpoint that has them (the default, as timm).
    """
    if isinstance(source, Mapping):
        return _to_state_dict(source, "state_dict mapping", use_ema=use_ema)
    path = _check_file(source)
    if Path(str(source)).suffix.lower() in SAFETENSORS_SUFFIXES or _is_safetensors(path):
        return read_safetensors(path)
    return read_pth(path, use_ema=use_ema)


def _is_safetensors(path: paths.Path) -> bool:
    """A safetensors file starts with its header's length (8 bytes) and the header, '{'."""
    with path.open("rb") as file:
        head = file.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")
