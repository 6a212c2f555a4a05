"""Fixtures and helpers the test modules share (no test module imports another).

- ``tiny_config``: the trainer's smallest real run, as a factory of validated configs;
  ``config_file`` writes one as JSON for a test's subprocess, which reads it back with
  ``ConfigDict(json.loads(text))``.
- ``parity``: torchvision reference models and the parity bound the parity tests apply.
- ``run_records`` and ``same_run``: a run's metrics, and "two workdirs hold the same run";
  ``sigterm_after``: a run preempted as it logs a step.
- ``gcs`` and ``upload``: a Cloud Storage emulator on 127.0.0.1 as ``gs://bucket``.
- ``imagenet`` and ``prepare_imagenet``: ImageNet's archives in miniature, prepared by TFDS.
- One persistent JAX compilation cache for the session's workers and the subprocesses they
  start, so a program compiled by one test is not compiled again by the next.

The tests run on the CPU whatever the machine has (``JAX_PLATFORMS=cpu`` unless set): the
parity bounds are float32 CPU bounds, and ``impl="cpu"`` needs the CPU backend. The
``accelerator`` tests ask for the accelerator:
``JAX_PLATFORMS=cuda python -m pytest -m accelerator`` (or ``tpu``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import http.server
import importlib.util
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before JAX is imported

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PARITY_BOUND = 1e-4  # max |ours - torchvision| / max(1, max |torchvision|)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory, worker_id):
    """One cache for every worker of the session and every subprocess a test starts (they
    read it from the environment). A size limit makes JAX lock the folder, which these
    processes share."""
    base = tmp_path_factory.getbasetemp()
    folder = str((base.parent if worker_id != "master" else base) / "jax_cache")
    settings = {"jax_compilation_cache_dir": folder, "jax_compilation_cache_max_size": 8 << 30}
    previous = {key.upper(): os.environ.get(key.upper()) for key in settings}
    for key, value in settings.items():
        jax.config.update(key, value)  # this process; its subprocesses read the environment
        os.environ[key.upper()] = str(value)
    yield
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key)
        else:
            os.environ[key] = value


def make_tiny_config(check: bool = True, **overrides):
    """resnet20 at 16x16 on 128 digits: 4 steps per epoch, 2 epochs, 3 eval batches.

    The trainer is imported here, not at the top, so that the model, conversion and
    inference tests need no more than the core install."""
    from train.config import base_config, validate

    config = base_config()
    config.update(
        name="tiny",
        model="resnet20",
        dataset="digits",
        train_split="train[:128]",
        eval_split="test[:80]",  # 3 eval batches of 32, the last one padded
        image_size=16,
        num_classes=10,
        augment=True,
        num_epochs=2,
        batch_size=32,
        eval_batch_size=32,
        learning_rate=0.05,
        log_every_steps=2,
        keep_checkpoints=2,
        keep_best=1,
    )
    config.update(overrides)
    return validate(config) if check else config


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Any]:
    return make_tiny_config


@pytest.fixture
def config_file(tmp_path) -> Callable[..., Path]:
    """``write(config, name="config.json") -> path``: a config as JSON, for a subprocess."""

    def write(config: Any, name: str = "config.json") -> Path:
        path = tmp_path / name
        path.write_text(config.to_json())
        return path

    return write


@pytest.fixture(scope="session")
def on_devices() -> Callable[..., subprocess.CompletedProcess]:
    """``run(script, *args, devices=8, env=None)``: ``python script args`` in a subprocess whose
    CPU is split into ``devices`` devices (a count JAX fixes when it starts), with the checkout
    importable (``train``), from the checkout's root; fails the test unless it succeeds."""

    def run(script, *args, devices: int = 8, env: dict | None = None):
        environment = (
            os.environ
            | {
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            }
            | (env or {})
        )
        done = subprocess.run(
            [sys.executable, str(script), *map(str, args)],
            env=environment, cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        return done

    return run


def run_records(workdir) -> dict[tuple[str, int], dict]:
    """A run's metrics.jsonl (local or remote): the last record per (split, step), without its
    wall-clock fields."""
    from resnet_flax.io import paths

    out = {}
    for line in paths.as_path(workdir).joinpath("metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for volatile in ("time", "images_per_sec"):
            record.pop(volatile, None)
        out[record["split"], record["step"]] = record
    return out


@pytest.fixture(scope="session", name="run_records")
def run_records_fixture() -> Callable[..., dict[tuple[str, int], dict]]:
    """``run_records(workdir)``: see :func:`run_records`."""
    return run_records


@pytest.fixture(scope="session")
def same_run() -> Callable[..., None]:
    """``same_run(a, b, steps)``: the runs in workdirs ``a`` and ``b`` (local or remote) ended
    at ``steps`` with bitwise equal variables and equal metrics records."""
    from train.checkpoint import load_variables
    from train.distributed import make_mesh

    def check(a, b, steps: int) -> None:
        mesh = make_mesh()
        va, _, sa = load_variables(str(a), mesh)
        vb, _, sb = load_variables(str(b), mesh)
        assert sa == sb == steps
        va, vb = jax.device_get(va), jax.device_get(vb)
        for (path, x), y in zip(jax.tree.leaves_with_path(va), jax.tree.leaves(vb), strict=True):
            np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
        assert run_records(a) == run_records(b)

    return check


@pytest.fixture
def sigterm_after(monkeypatch) -> Callable[[int], None]:
    """``sigterm_after(step)``: the trainer sends itself SIGTERM as it logs train step ``step``
    (as a scheduler preempting it would); ``monkeypatch.undo()`` disarms it."""
    from train import loop

    def arm(step: int) -> None:
        class SignallingWriter(loop.MetricsWriter):
            def write(self, split, at, epoch, **metrics):
                record = super().write(split, at, epoch, **metrics)
                if split == "train" and at == step:
                    os.kill(os.getpid(), signal.SIGTERM)
                return record

        monkeypatch.setattr(loop, "MetricsWriter", SignallingWriter)

    return arm


# --------------------------------------------------------------------- Cloud Storage emulator


class _HuggingFace(http.server.BaseHTTPRequestHandler):
    """The hub's file-resolve route, /REPO/resolve/REVISION/FILE, for one file."""

    files: dict[str, bytes] = {}

    def _answer(self, body: bool) -> None:
        path = self.path.split("?")[0]
        data = type(self).files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def hugging_face_server(files: dict[str, bytes]):
    """The Hugging Face hub's file-resolve route on 127.0.0.1, serving ``files`` (route ->
    bytes, e.g. ``/timm/resnet18d.ra2_in1k/resolve/main/model.safetensors``); yields the
    address for ``HF_ENDPOINT``."""
    handler = type("Files", (_HuggingFace,), {"files": files})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


@pytest.fixture(scope="session", name="hugging_face_server")
def hugging_face_server_fixture():
    """:func:`hugging_face_server`, for the test modules."""
    return hugging_face_server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _download_with_generation(download, not_found: type[Exception]):
    """The emulator's media download, answering with the object's ``x-goog-generation`` header
    as Cloud Storage does: TensorStore reads an object's generation from it (without it, a
    cached OCDBT manifest read back fails with "Malformed StorageGeneration")."""

    def wrapped(request, response, storage, *args, **kwargs):
        try:
            found = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = found["generation"]
        except not_found:
            pass
        return download(request, response, storage, *args, **kwargs)

    return wrapped


@pytest.fixture(scope="module")
def gcs():
    """``gs://bucket``: a Cloud Storage server on 127.0.0.1 holding an empty bucket, and the
    environment that points gcsfs and TensorStore at it (no credentials, no metadata server).
    ``CLOUD_STORAGE_EMULATOR_ENDPOINT`` (array_record's C++ client) is left for the code under
    test to set from ``STORAGE_EMULATOR_HOST``, and unset afterwards."""
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    errors = pytest.importorskip("gcp_storage_emulator.exceptions")
    objects = pytest.importorskip("gcp_storage_emulator.handlers.objects")
    pytest.importorskip("gcsfs")
    port = _free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="bucket")
    server.start()
    url = f"http://127.0.0.1:{port}"
    for chatty in ("gcsfs", "google.auth"):  # "no default credentials", at every bucket
        logging.getLogger(chatty).setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as env:
        # objects.get looks download up at call time (alt=media reads, TensorStore's route)
        env.setattr(
            objects, "download", _download_with_generation(objects.download, errors.NotFound)
        )
        env.setenv("STORAGE_EMULATOR_HOST", url)
        env.setenv("TENSORSTORE_GCS_HTTP_URL", url)
        env.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", "")
        env.setenv("GCE_METADATA_ROOT", "127.0.0.1:1")  # fail fast: no GCE credentials here
        yield "gs://bucket"
    server.stop()


@pytest.fixture(scope="session")
def upload() -> Callable[[Path, str], None]:
    """``upload(local, remote)``: copy the files under ``local`` to ``remote`` (``gs://...``)."""
    from resnet_flax.io import paths

    def copy(local: Path, remote: str) -> None:
        for path in local.rglob("*"):
            if path.is_file():
                target = paths.as_path(f"{remote}/{path.relative_to(local).as_posix()}")
                target.write_bytes(path.read_bytes())

    return copy


# --------------------------------------------------------------------- ImageNet as TFDS prepares it

# The classes of ImageNet's first six validation images (the devkit's ground truth): TFDS labels
# the validation files by their sorted position in its own list, so the first six files get these.
IMAGENET_VAL_CLASSES = (
    "n01751748",
    "n09193705",
    "n02105855",
    "n04263257",
    "n03125729",
    "n01735189",
)
IMAGENET_CMYK = "n01739381_1309.JPEG"  # on TFDS's list of ImageNet's CMYK JPEGs
IMAGENET_PNG = "n02105855_2933.JPEG"  # ImageNet's one PNG named .JPEG


@dataclasses.dataclass(frozen=True)
class ImageNetFiles:
    manual: Path  # ILSVRC2012_img_train.tar (a tar per class inside), ILSVRC2012_img_val.tar
    folders: Path  # the same images as train/WNID/FILE and val/WNID/FILE (the folder route)
    tfds: Path  # a data_dir holding imagenet2012/ that TFDS prepared from ``manual``
    converted: tuple[str, ...] = (IMAGENET_CMYK, IMAGENET_PNG)  # TFDS re-encodes these two


def _encoded(rng: np.random.Generator, mode: str, fmt: str = "JPEG") -> bytes:
    """A noise image of odd size in PIL ``mode``, encoded."""
    from PIL import Image

    width, height = (int(v) * 2 + 1 for v in rng.integers(17, 45, 2))
    pixels = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    out = io.BytesIO()
    pixels.convert(mode).save(out, fmt)
    return out.getvalue()


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_imagenet(root: Path) -> tuple[Path, Path]:
    """ImageNet's manual archives in miniature (7 classes, 2-4 JPEGs each, 6 validation JPEGs;
    odd sizes, grayscale ones, a CMYK one and the PNG among them), and the same images in the
    folder layout; returns (manual dir, folder root)."""
    rng = np.random.default_rng(2012)
    train: dict[str, dict[str, bytes]] = {}
    for index, wnid in enumerate(sorted({*IMAGENET_VAL_CLASSES, IMAGENET_CMYK[:9]})):
        modes = ["L" if index == 0 else "RGB"] + ["RGB"] * (1 + index % 3)
        train[wnid] = {f"{wnid}_{i + 10}.JPEG": _encoded(rng, m) for i, m in enumerate(modes)}
    train[IMAGENET_CMYK[:9]][IMAGENET_CMYK] = _encoded(rng, "CMYK")
    train[IMAGENET_PNG[:9]][IMAGENET_PNG] = _encoded(rng, "RGB", "PNG")
    val = {
        f"ILSVRC2012_val_{k + 1:08d}.JPEG": (wnid, _encoded(rng, "L" if k == 1 else "RGB"))
        for k, wnid in enumerate(IMAGENET_VAL_CLASSES)
    }
    manual, folders = root / "manual", root / "folders"
    manual.mkdir(parents=True)
    inner = {f"{wnid}.tar": _tar(files) for wnid, files in train.items()}
    (manual / "ILSVRC2012_img_train.tar").write_bytes(_tar(inner))
    (manual / "ILSVRC2012_img_val.tar").write_bytes(_tar({k: v for k, (_, v) in val.items()}))
    for split, files in (
        ("train", {f"{w}/{f}": d for w, fs in train.items() for f, d in fs.items()}),
        ("val", {f"{w}/{f}": d for f, (w, d) in val.items()}),
    ):
        for name, data in files.items():
            (folders / split / name).parent.mkdir(parents=True, exist_ok=True)
            (folders / split / name).write_bytes(data)
    return manual, folders


def _prepare_imagenet(data_dir: Path, manual: Path) -> subprocess.CompletedProcess:
    """``python -m train.prepare`` in a subprocess (TensorFlow stays out of the test process)."""
    return subprocess.run(
        [sys.executable, "-m", "train.prepare", "--data_dir", str(data_dir), "--manual_dir",
         str(manual)],
        cwd=ROOT, capture_output=True, text=True, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip


@pytest.fixture(scope="session")
def prepare_imagenet() -> Callable[[Path, Path], subprocess.CompletedProcess]:
    """``prepare_imagenet(data_dir, manual_dir)``: ``python -m train.prepare`` in a subprocess."""
    return _prepare_imagenet


@pytest.fixture(scope="session")
def imagenet(tmp_path_factory, worker_id) -> ImageNetFiles:
    """The miniature ImageNet, prepared once per test run: the first xdist worker to ask
    prepares it (under a lock), the others read it."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("preparing imagenet2012 needs TensorFlow: pip install -e '.[prepare]'")
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if worker_id != "master" else base) / "imagenet"
    with open(f"{root}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            shutil.rmtree(root, ignore_errors=True)
            manual, _ = write_imagenet(root)
            done = _prepare_imagenet(root / "tfds", manual)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
            (root / "done").write_text(done.stdout)
    return ImageNetFiles(root / "manual", root / "folders", root / "tfds")


# --------------------------------------------------------------------- torchvision references


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max(1, max |ref|): the quantity the parity bound applies to."""
    return float(np.abs(out - ref).max() / max(1.0, float(np.abs(ref).max())))


def torch_model(name: str, seed: int):
    """torchvision's model with random weights and non-trivial BatchNorm state.

    The last BatchNorm of each residual branch gets its weight from U(0.1, 0.3), as trained
    ResNets have (every other BatchNorm: U(0.5, 1.5)), so that float32 resolves the answer to
    the bound: with U(0.5, 1.5) everywhere the residual stream of the 101/152-layer nets grows
    until torch itself, float32 against float64, differs by more than the bound.
    """
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, **model_options(name))
    _randomise_norms(model, seed)
    return model


def timm_model(name: str, seed: int):
    """timm's model with random weights and non-trivial BatchNorm state, drawn as
    :func:`torch_model` draws them (the residual branch's last BatchNorm small)."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    _randomise_norms(model, seed)
    return model


def _randomise_norms(model, seed: int) -> None:
    """Random norm weights and BatchNorm statistics (EvoNorm's ``v`` and FRN's ``tau`` too);
    the norm that ends each residual branch small: ``bn2`` of a ``BasicBlock``, ``bn3`` of a
    ``Bottleneck`` (torchvision's and timm's), ``norm3``/``norm2`` of timm's ResNetV2
    ``PreActBottleneck``/``PreActBasic`` (before the branch's last conv), the last conv
    layer's of transformers' ``ResNetBasicLayer``/``ResNetBottleNeckLayer``."""
    import torch

    last = {"BasicBlock": "bn2", "Bottleneck": "bn3", "PreActBottleneck": "norm3",
            "PreActBasic": "norm2"}  # fmt: skip
    residual_last = {
        id(getattr(b, last[type(b).__name__]))
        for b in model.modules()
        if hasattr(b, last.get(type(b).__name__, ""))
    } | {  # transformers' ResNet layers: the last conv layer's norm
        id(b.layer[-1].normalization)
        for b in model.modules()
        if type(b).__name__ in ("ResNetBasicLayer", "ResNetBottleNeckLayer")
    }
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):  # timm's resnet50_gn: no running statistics
                low, high = (0.1, 0.3) if id(m) in residual_last else (0.5, 1.5)
                m.weight.uniform_(low, high, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
            if hasattr(m, "v") or hasattr(m, "tau"):  # timm's EvoNorm-S0, FRN + TLU
                low, high = (0.1, 0.3) if id(m) in residual_last else (0.5, 1.5)
                m.weight.uniform_(low, high, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                extra = m.v if hasattr(m, "v") else m.tau
                extra.uniform_(0.5, 1.5, generator=g) if hasattr(m, "v") else extra.uniform_(
                    -0.5, 0.0, generator=g
                )
            if isinstance(m, torch.nn.BatchNorm2d):
                low, high = (0.1, 0.3) if id(m) in residual_last else (0.5, 1.5)
                m.weight.uniform_(low, high, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.num_batches_tracked.fill_(7)


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def nchw(x: np.ndarray):
    import torch

    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def model_options(name: str) -> dict:
    """Options on both sides: VGG without dropout, whose masks are random."""
    return {"dropout": 0.0} if name.startswith("vgg") else {}


@pytest.fixture(scope="session")
def parity() -> types.SimpleNamespace:
    """The parity tests' bound, error measure and torchvision reference models."""
    return types.SimpleNamespace(
        BOUND=PARITY_BOUND,
        rel_err=rel_err,
        torch_model=torch_model,
        timm_model=timm_model,
        randomise_norms=_randomise_norms,
        state_dict_numpy=state_dict_numpy,
        nchw=nchw,
        options=model_options,
    )
