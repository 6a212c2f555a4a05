"""Tests for the torch-free .pth / safetensors reader and writer."""

import collections
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from resnet_flax.io.pth import (
    CheckpointError,
    UnsafeCheckpointError,
    _pickle_int,
    _pickle_ints,
    _pickle_str,
    read_pth,
    read_safetensors,
    read_state_dict,
    write_pth,
    write_safetensors,
)

REPO = Path(__file__).resolve().parents[1]
TORCH_REASON = "torch is not installed; the torch interop checks need it"


def _all_dtypes() -> dict[str, np.ndarray]:
    """One array per supported dtype, including 0-d, empty and non-contiguous ones."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    return {
        "conv.weight": weight,
        "fc.weight.T": weight.reshape(4, 18).T,  # non-contiguous view
        "f64": rng.standard_normal(5),
        "f16": rng.standard_normal((2, 3)).astype(np.float16),
        "bf16": rng.standard_normal((3, 2)).astype(ml_dtypes.bfloat16),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "i64": np.array([-(2**40), 2**40], dtype=np.int64),
        "i32": np.arange(-3, 3, dtype=np.int32),
        "i16": np.arange(4, dtype=np.int16),
        "i8": np.array([-128, 127], dtype=np.int8),
        "u8": np.array([[0, 255]], dtype=np.uint8),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((2, 0), dtype=np.float32),
    }


def _assert_same(got: dict, expected: dict, ordered: bool = True) -> None:
    assert list(got) == list(expected) if ordered else sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        assert got[key].flags.c_contiguous, key
        np.testing.assert_array_equal(got[key], value, err_msg=key, strict=True)


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _torch_tensor_as_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.float().numpy().astype(ml_dtypes.bfloat16)
    return tensor.numpy()


def test_torch_save_round_trip_is_exact(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    torchvision = pytest.importorskip("torchvision", reason=TORCH_REASON)
    state = torchvision.models.resnet18().state_dict()
    base = torch.randn(6, 5)
    state["extra.transposed"] = base.t()  # saved as-is: strides (1, 5)
    state["extra.sliced"] = base[2:4]  # shares base's storage at offset 10
    state["extra.bf16"] = torch.randn(3, 4, dtype=torch.bfloat16)
    state["extra.fp16"] = torch.randn(4, 3).half()
    state["extra.bool"] = torch.tensor([True, False])
    torch.save(state, tmp_path / "resnet18.pth")

    got = read_pth(tmp_path / "resnet18.pth")

    assert got["bn1.num_batches_tracked"].shape == ()
    assert got["extra.bf16"].dtype == ml_dtypes.bfloat16
    _assert_same(got, {key: _torch_tensor_as_numpy(value) for key, value in state.items()})


def test_write_pth_loads_in_torch_and_torchvision(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    torchvision = pytest.importorskip("torchvision", reason=TORCH_REASON)
    reference = torchvision.models.resnet18().state_dict()
    arrays = {key: value.numpy() for key, value in reference.items()}
    write_pth(tmp_path / "resnet18.pth", arrays)
    write_pth(tmp_path / "dtypes.pth", _all_dtypes())

    loaded = torch.load(tmp_path / "resnet18.pth", weights_only=True)
    model = torchvision.models.resnet18()
    model.load_state_dict(loaded, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    dtypes = torch.load(tmp_path / "dtypes.pth", weights_only=True)
    _assert_same({k: _torch_tensor_as_numpy(v) for k, v in dtypes.items()}, _all_dtypes())


def test_wrapped_checkpoints_and_tensor_mappings(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    state = {"module.fc.weight": torch.randn(2, 3), "module.fc.bias": torch.zeros(2)}
    state["module.fc.bf16"] = torch.ones(2, dtype=torch.bfloat16)
    expected = {key: _torch_tensor_as_numpy(v) for key, v in state.items()}  # prefixes: convert
    for wrapper in ("state_dict", "model_state_dict", "model"):
        path = tmp_path / f"{wrapper}.pt"
        torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, wrapper: state}, path)
        _assert_same(read_state_dict(path), expected)
    _assert_same(read_state_dict(state), expected)


def test_torch_free_round_trip(tmp_path):
    """write_pth -> read_pth in a subprocess where importing torch fails."""
    path = tmp_path / "weights.pth"
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from tests.test_pth import _all_dtypes\n"
        "from resnet_flax.io.pth import write_pth\n"
        f"write_pth({str(path)!r}, _all_dtypes())\n"
        "assert 'torch' not in {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    _assert_same(read_pth(path), {k: np.asarray(v, order="C") for k, v in _all_dtypes().items()})

    raw = path.read_bytes()  # storages start on 64-byte boundaries, as torch writes them
    with zipfile.ZipFile(path) as archive:
        assert archive.read("archive/byteorder") == b"little"
        assert archive.read("archive/version") == b"3\n"
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            name_length, extra_length = struct.unpack_from("<HH", raw, info.header_offset + 26)
            start = info.header_offset + 30 + name_length + extra_length
            assert start % 64 == 0, info.filename
            assert raw[start : start + info.file_size] == archive.read(info)


def test_big_endian_checkpoint(tmp_path):
    arrays = {k: np.asarray(v, order="C") for k, v in _all_dtypes().items()}
    write_pth(tmp_path / "little.pth", arrays)
    with zipfile.ZipFile(tmp_path / "little.pth") as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members["archive/byteorder"] = b"big"
    for index, array in enumerate(arrays.values()):
        ints = array.view(f"u{array.itemsize}")  # swap bytes within each element
        members[f"archive/data/{index}"] = ints.astype(f">u{array.itemsize}").tobytes()
    _assert_same(read_pth(_write_zip(tmp_path / "big.pth", members)), arrays)


def _reduce_payload(encoding: str, marker: Path) -> bytes:
    """Hand-assembled pickles that would call os.system(touch marker) if unpickled naively."""
    command = f"touch {marker}".encode()
    argument = pickle.BINUNICODE + struct.pack("<I", len(command)) + command
    if encoding == "GLOBAL":
        call = pickle.GLOBAL + b"posix\nsystem\n" + argument + pickle.TUPLE1 + pickle.REDUCE
    elif encoding == "STACK_GLOBAL":
        names = b"\x8c\x05posix\x8c\x06system" + pickle.STACK_GLOBAL
        call = names + argument + pickle.TUPLE1 + pickle.REDUCE
    else:  # INST: protocol 0's class-call opcode
        call = pickle.MARK + argument + pickle.INST + b"posix\nsystem\n"
    # Nest it in a state dict so the refusal happens mid-stream.
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + b"X\x01\x00\x00\x00w" + call + b"s."


@pytest.mark.parametrize("encoding", ["GLOBAL", "STACK_GLOBAL", "INST"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, encoding):
    marker = tmp_path / "pwned"
    payload = _reduce_payload(encoding, marker)
    path = _write_zip(tmp_path / "evil.pth", {"archive/data.pkl": payload, "archive/version": b"3"})
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system") as error:
        read_pth(path)
    assert str(path) in str(error.value)
    assert isinstance(error.value, ValueError)
    assert not marker.exists()


def test_non_tensor_global_is_refused(tmp_path):
    payload = pickle.dumps({"counts": collections.Counter("ab")}, protocol=2)
    path = _write_zip(tmp_path / "counter.pth", {"archive/data.pkl": payload})
    with pytest.raises(UnsafeCheckpointError, match=r"collections\.Counter"):
        read_pth(path)


def test_corrupt_files_name_the_file(tmp_path):
    good = tmp_path / "good.pth"
    write_pth(good, {"w": np.arange(64, dtype=np.float32)})
    raw = good.read_bytes()
    cases = {
        "truncated.pth": raw[: len(raw) // 2],
        "random.pth": np.random.default_rng(0).bytes(4096),
        "empty.pth": b"",
    }
    crc = bytearray(raw)
    with zipfile.ZipFile(good) as archive:
        info = archive.getinfo("archive/data/0")
    crc[info.header_offset + 200] ^= 0xFF  # inside the storage data: CRC mismatch
    cases["crc.pth"] = bytes(crc)
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=name):
            read_pth(tmp_path / name)


def test_structural_errors_explain_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_pth(tmp_path / "missing.pth")
    legacy = tmp_path / "legacy.pth"  # torch < 1.6 files start with a pickled magic number
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
    with pytest.raises(CheckpointError, match=r"legacy.*torch\.save"):
        read_pth(legacy)
    no_pickle = _write_zip(tmp_path / "script.pt", {"archive/constants.pkl": b""})
    with pytest.raises(CheckpointError, match="no data.pkl"):
        read_pth(no_pickle)
    write_pth(tmp_path / "good.pth", {"w": np.ones(8)})
    with zipfile.ZipFile(tmp_path / "good.pth") as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members["archive/data/0"] = members["archive/data/0"][:40]
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_pth(_write_zip(tmp_path / "short.pth", members))
    for obj, message in [([1, 2], "holds a list"), ({"epoch": 3}, "entry 'epoch' is int")]:
        path = _write_zip(tmp_path / "odd.pth", {"archive/data.pkl": pickle.dumps(obj, 2)})
        with pytest.raises(CheckpointError, match=message):
            read_pth(path)
    with pytest.raises(CheckpointError, match="complex64"):
        write_pth(tmp_path / "c.pth", {"z": np.zeros(2, np.complex64)})


def test_safetensors_round_trip_and_errors(tmp_path):
    arrays = {k: np.asarray(v, order="C") for k, v in _all_dtypes().items()}
    path = tmp_path / "weights.safetensors"
    write_safetensors(path, arrays)
    _assert_same(read_safetensors(path), arrays, ordered=False)  # safetensors sorts keys
    _assert_same(read_state_dict(path), arrays, ordered=False)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        read_safetensors(truncated)
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(tmp_path / "missing.safetensors")


def test_read_state_dict_dispatch(tmp_path):
    arrays = {"module.w": np.ones((2, 2), np.float32), "module.b": np.zeros(2, np.float32)}
    write_pth(tmp_path / "w.bin", arrays)
    _assert_same(read_state_dict(tmp_path / "w.bin"), arrays)
    _assert_same(read_state_dict(arrays), arrays)
    np.savez(tmp_path / "w.npz", **arrays)  # a zip, not torch's
    with pytest.raises(CheckpointError, match=r"w\.npz: no data\.pkl .*not a torch\.save"):
        read_state_dict(tmp_path / "w.npz")
    # read by content, not by name: timm's model_best.pth.tar, a safetensors file named .bin
    write_pth(tmp_path / "model_best.pth.tar", arrays)
    _assert_same(read_state_dict(tmp_path / "model_best.pth.tar"), arrays)
    write_safetensors(tmp_path / "st.bin", arrays)
    _assert_same(read_state_dict(tmp_path / "st.bin"), arrays, ordered=False)
    (tmp_path / "x.pth").mkdir()
    with pytest.raises(CheckpointError, match=r"x\.pth is a directory, not a weights file"):
        read_state_dict(tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=r"nothing\.pth: no such file"):
        read_state_dict(tmp_path / "nothing.pth")


def test_timm_training_checkpoints_load_the_ema_weights_and_say_so(tmp_path):
    """timm's train.py saves args (an argparse.Namespace), the weights and their EMA."""
    import argparse

    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    plain = {"fc.weight": torch.zeros(2, 3)}
    ema = {"fc.weight": torch.ones(2, 3)}
    args = argparse.Namespace(model="resnet50", lr=0.1, model_ema=True)
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 3, "arch": "resnet50", "args": args, "state_dict": plain,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                "state_dict_ema": ema, "metric": 71.2}, path)  # fmt: skip
    with pytest.warns(UserWarning, match=r"loaded the EMA weights under 'state_dict_ema'; "
                      r"use_ema=False loads 'state_dict'"):  # fmt: skip
        assert read_state_dict(path)["fc.weight"].sum() == 6
    with pytest.warns(UserWarning, match=r"loaded the weights under 'state_dict'; use_ema=True"):
        assert read_state_dict(path, use_ema=False)["fc.weight"].sum() == 0
    torch.save({"epoch": 1, "model_ema": ema}, tmp_path / "ema_only.pth")
    assert read_state_dict(tmp_path / "ema_only.pth", use_ema=False)["fc.weight"].sum() == 6
    torch.save({"args": args, "where": Path("/x"), "state_dict": plain}, path)
    with pytest.raises(UnsafeCheckpointError, match="global 'pathlib.*Path'"):  # only Namespace
        read_state_dict(path)


# ---------------------------------------------------------------- files built to exhaust memory


def _tensor_records(keys: list[str], numel: int, size: tuple, stride: tuple) -> bytes:
    """A state_dict pickle whose ``keys`` all rebuild from storage "0" of ``numel`` floats."""
    ordered_dict = (
        pickle.GLOBAL + b"collections\nOrderedDict\n" + pickle.EMPTY_TUPLE + pickle.REDUCE
    )
    out = [pickle.PROTO + b"\x02", ordered_dict]
    for key in keys:
        out += [
            _pickle_str(key),
            pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.MARK,
            pickle.MARK + _pickle_str("storage") + pickle.GLOBAL + b"torch\nFloatStorage\n",
            _pickle_str("0") + _pickle_str("cpu") + _pickle_int(numel),
            pickle.TUPLE + pickle.BINPERSID + _pickle_int(0),
            _pickle_ints(size) + _pickle_ints(stride) + pickle.NEWFALSE + ordered_dict,
            pickle.TUPLE + pickle.REDUCE + pickle.SETITEM,
        ]
    return b"".join(out) + pickle.STOP


def _hostile_pth(path: Path, records: bytes, data: bytes, compress: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", records)
        archive.writestr("archive/byteorder", b"little")
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        archive.writestr("archive/data/0", data, compress_type=method)
    return path


_CAPPED_READ = """
import resource, sys
from resnet_flax.io.pth import CheckpointError, read_pth
size = next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]
cap = int(size) * 1024 + 192 * 2**20  # what the interpreter has mapped, plus 192 MiB
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
try:
    read_pth(sys.argv[1])
except CheckpointError as error:
    print("REFUSED", error)
except MemoryError:
    print("OUT OF MEMORY")
"""


def _read_capped(path: Path) -> str:
    """read_pth(path) in a process allowed 192 MiB more than it starts with: a regression
    fails with OUT OF MEMORY instead of swapping."""
    run = subprocess.run(
        [sys.executable, "-c", _CAPPED_READ, str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return run.stdout + run.stderr


def test_zero_strides_cannot_inflate_a_tensor(tmp_path):
    """The issue's 633-byte file: 2 GiB of one float repeated by a zero stride."""
    records = _tensor_records(["w"], numel=1, size=(1 << 29,), stride=(0,))
    path = _hostile_pth(tmp_path / "zero_stride.pth", records, np.ones(1, np.float32).tobytes())
    assert path.stat().st_size < 1000
    assert "REFUSED" in (out := _read_capped(path)) and "zero or overlapping strides" in out, out


def test_a_compressed_member_is_refused_before_it_inflates(tmp_path):
    """1 MiB on disk, 256 MiB once inflated: torch never compresses, so it is not inflated."""
    numel = 64 << 20
    records = _tensor_records(["w"], numel=numel, size=(numel,), stride=(1,))
    zeros = bytes(numel * 4)
    path = _hostile_pth(tmp_path / "deflated.pth", records, zeros, compress=True)
    del zeros
    assert path.stat().st_size < 2 << 20
    out = _read_capped(path)
    assert "REFUSED" in out and "archive/data/0 is compressed" in out, out


def test_many_tensors_on_one_storage_are_bounded(tmp_path):
    """100 tensors of one 4 MiB storage would take 400 MiB: at most twice the data is."""
    numel = 1 << 20
    keys = [f"w{i}" for i in range(100)]
    records = _tensor_records(keys, numel=numel, size=(numel,), stride=(1,))
    path = _hostile_pth(tmp_path / "shared.pth", records, bytes(numel * 4))
    out = _read_capped(path)
    assert "REFUSED" in out and "more than twice the bytes" in out, out
    two = _hostile_pth(tmp_path / "tied.pth", _tensor_records(["a", "b"], 4, (4,), (1,)), bytes(16))
    assert list(read_pth(two)) == ["a", "b"]  # tied weights: one storage, two tensors
