"""The training data sets: in-memory loaders, on-device augmentation, the grain stream, errors."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import subprocess
import tarfile
import urllib.error
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from resnet_flax.io.download import ChecksumError, download
from train.data import (
    DataError,
    StreamSpec,
    augment_cifar,
    cifar,
    crop_and_flip,
    dataset_spec,
    epoch_permutation,
    folder_arrays,
    load_arrays,
    make_stream,
    normalize,
    stream_info,
)
from train.data.errors import decoded
from train.data.images import eval_crop, random_resized_box, train_crop

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RESNET_FLAX_SHARED", REPO.parent / "shared"))
CIFAR_JPEG = SHARED / "data" / "cifar10-jpeg.tar.gz"
CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test caches into its own folder, never the user's ~/.cache."""
    monkeypatch.setenv("RESNET_FLAX_CACHE", str(tmp_path / "cache"))


def _save(path: Path, pixels: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)


# ---------------------------------------------------------------- folder, in memory


def _solid_tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Class folders (deliberately created out of order) of solid-colour PNGs, two sizes."""
    colours = {"zebra": (200, 10, 10), "apple": (10, 200, 10), "mango": (10, 10, 200)}
    for name, colour in colours.items():
        for i, (h, w) in enumerate([(32, 32), (30, 44)]):
            _save(root / "train" / name / f"{i}.png", np.full((h, w, 3), colour, np.uint8))
    return colours


def test_folder_in_memory_labels_shapes_and_cache(tmp_path, monkeypatch):
    data = tmp_path / "data"
    colours = _solid_tree(data)
    first = load_arrays("folder", str(data), "train", 32)
    assert first.images.shape == (6, 32, 32, 3) and first.images.dtype == np.uint8
    assert first.labels.dtype == np.int32
    assert first.class_names == ["apple", "mango", "zebra"] and first.num_classes == 3
    np.testing.assert_array_equal(first.labels, [0, 0, 1, 1, 2, 2])
    for image, label in zip(first.images, first.labels, strict=True):
        # Lossless solid colours survive the resize of the 30x44 images exactly.
        assert (image == colours[first.class_names[label]]).all()
    spec = dataset_spec("folder")
    assert (spec.mean, spec.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    cached = list((tmp_path / "cache").glob("folder-*.npz"))
    assert len(cached) == 1
    assert not [p for p in data.rglob("*") if p.suffix not in (".png", "")], "wrote into data_dir"

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is current")

    monkeypatch.setattr(folder_arrays, "decode_all", no_decoding)
    second = load_arrays("folder", str(data), "train", 32)
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.class_names == first.class_names

    _save(data / "train" / "apple" / "2.png", np.zeros((32, 32, 3), np.uint8))  # a new file
    with pytest.raises(AssertionError, match="decoded again"):
        load_arrays("folder", str(data), "train", 32)


def test_folder_images_in_class_subfolders_belong_to_the_class(tmp_path):
    """torchvision's ImageFolder walks below each class folder; so does the listing."""
    from train.data.folder import list_folder

    pixels = np.zeros((8, 8, 3), np.uint8)
    for name in ("a/x/1.png", "a/x/y/2.png", "a/3.png", "b/deep/4.png", "b/.hidden/5.png"):
        _save(tmp_path / "train" / name, pixels)
    listing = list_folder(str(tmp_path), "train")
    assert listing.files == ["a/3.png", "a/x/1.png", "a/x/y/2.png", "b/deep/4.png"]
    assert listing.labels.tolist() == [0, 0, 0, 1]


def test_folder_real_cifar10_jpeg_val(tmp_path):
    if not CIFAR_JPEG.exists():
        pytest.skip(f"{CIFAR_JPEG} not present (set RESNET_FLAX_SHARED to the shared folder)")
    if shutil.which("tar"):  # GNU tar is several times faster than tarfile at this
        command = ["tar", "-xzf", str(CIFAR_JPEG), "-C", str(tmp_path), "cifar10-jpeg/val"]
        subprocess.run(command, check=True)
    else:
        with tarfile.open(CIFAR_JPEG, "r:gz") as tar:
            val = [m for m in tar if m.name.startswith("cifar10-jpeg/val/")]
            tar.extractall(tmp_path, members=val, filter="data")
    root = tmp_path / "cifar10-jpeg"
    ds = load_arrays("folder", str(root), "val", 32)  # 5,000 files: the worker-pool path
    assert ds.images.shape == (5000, 32, 32, 3)
    assert ds.class_names == CIFAR10_NAMES
    np.testing.assert_array_equal(np.bincount(ds.labels), [500] * 10)
    one = np.asarray(Image.open(root / "val" / "cat" / sorted(os.listdir(root / "val" / "cat"))[0]))
    np.testing.assert_array_equal(ds.images[3 * 500], one)  # first cat, decoded as is
    assert 80 < ds.images.mean() < 160  # natural images, not blanks


# ---------------------------------------------------------------- CIFAR


def _cifar10_members(n: int = 2) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """The official pickle format (bytes keys, (n, 3072) uint8 rows, R then G then B planes)."""
    rng = np.random.default_rng(0)
    members, rows, labels = {}, {"train": [], "test": []}, {"train": [], "test": []}
    batches = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]
    for name, split in batches:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        if name == "data_batch_1":
            data[0] = 0
            data[0, :1024] = 255  # all red
            data[0, 1024 + 1] = 7  # green at row 0, column 1
        target = rng.integers(0, 10, n).tolist()
        members[name] = pickle.dumps(
            {b"batch_label": name.encode(), b"labels": target, b"data": data,
             b"filenames": [b"x.png"] * n},
            protocol=2,
        )  # fmt: skip
        rows[split].append(data)
        labels[split] += target
    members["batches.meta"] = pickle.dumps(
        {b"label_names": [c.encode() for c in CIFAR10_NAMES], b"num_vis": 3072}, protocol=2
    )
    return members, {"rows": rows, "labels": labels}


def _write_tar(path: Path, members: dict[str, bytes], top: str, monkeypatch=None) -> None:
    """A CIFAR-style archive; with ``monkeypatch``, its md5 is made the published one."""
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    if monkeypatch is not None:
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        monkeypatch.setitem(cifar.CIFAR, "cifar10", replace(cifar.CIFAR["cifar10"], md5=md5))


@pytest.fixture
def no_download(monkeypatch):
    def offline(url, dest, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(cifar, "download", offline)


def test_cifar10_from_python_archive_and_folder(tmp_path, no_download, monkeypatch):
    members, expected = _cifar10_members()
    archive_dir, folder_dir = tmp_path / "archive", tmp_path / "folder"
    archive_dir.mkdir()
    archive = archive_dir / "cifar-10-python.tar.gz"
    _write_tar(archive, members, "cifar-10-batches-py", monkeypatch)
    (folder_dir / "cifar-10-batches-py").mkdir(parents=True)
    for name, payload in members.items():
        (folder_dir / "cifar-10-batches-py" / name).write_bytes(payload)

    for root in (archive_dir, folder_dir):
        train = load_arrays("cifar10", str(root), "train", 32)
        assert train.images.shape == (10, 32, 32, 3) and train.images.dtype == np.uint8
        assert train.class_names == CIFAR10_NAMES and train.num_classes == 10
        assert dataset_spec("cifar10").mean == (0.4914, 0.4822, 0.4465)
        np.testing.assert_array_equal(train.labels, expected["labels"]["train"])
        red = np.zeros((32, 32, 3), np.uint8)
        red[..., 0] = 255
        red[0, 1, 1] = 7
        np.testing.assert_array_equal(train.images[0], red)
        rows = np.concatenate(expected["rows"]["train"])
        np.testing.assert_array_equal(
            train.images[5], rows[5].reshape(3, 32, 32).transpose(1, 2, 0)
        )
        test = load_arrays("cifar10", str(root), "test", 32)
        np.testing.assert_array_equal(test.labels, expected["labels"]["test"])
        head = load_arrays("cifar10", str(root), "train[:4]", 32)
        np.testing.assert_array_equal(head.images, train.images[:4])

    # an archive cut short, its md5 right (as if the published one were): named, not EOFError
    archive.write_bytes(archive.read_bytes()[:-200])
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(cifar.CIFAR, "cifar10", replace(cifar.CIFAR["cifar10"], md5=md5))
    with pytest.raises(DataError, match=r"Cannot read .*cifar-10-python.tar.gz .*delete it"):
        load_arrays("cifar10", str(archive_dir), "test", 32)
    monkeypatch.undo()  # the published md5 again: the local archive is checked, as torchvision
    with pytest.raises(DataError, match=r"tar.gz has md5 [0-9a-f]{32}, but cifar-10-python"
                       r".tar.gz has c58f30108f718f92721af3b95e74349a: it is damaged"):  # fmt: skip
        load_arrays("cifar10", str(archive_dir), "test", 32)


def test_cifar_batch_file_cannot_run_code(tmp_path, no_download, monkeypatch):
    members, _ = _cifar10_members()
    members["data_batch_1"] = pickle.dumps({b"data": os.getcwd}, protocol=2)  # a global
    _write_tar(tmp_path / "cifar-10-python.tar.gz", members, "cifar-10-batches-py", monkeypatch)
    with pytest.raises(DataError, match="not a CIFAR python batch file"):
        load_arrays("cifar10", str(tmp_path), "train", 32)


def test_download_checks_md5_and_leaves_nothing_half_written(tmp_path):
    """The one download helper, as the CIFAR archive uses it (md5; weights use sha256)."""
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 3_000_000)
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "archive.tar.gz"
    download(source.as_uri(), str(dest), algorithm="md5", expected=md5, progress=False)
    assert dest.read_bytes() == source.read_bytes()
    bad = tmp_path / "out" / "bad.tar.gz"
    with pytest.raises(ChecksumError, match="but 0123 was expected") as error:
        download(source.as_uri(), str(bad), algorithm="md5", expected="0123", progress=False)
    assert error.value.actual == md5
    assert sorted(p.name for p in dest.parent.iterdir()) == ["archive.tar.gz"]


def test_cifar_offline_and_absent_says_what_to_put_where(tmp_path, no_download):
    with pytest.raises(DataError) as error:
        load_arrays("cifar10", str(tmp_path), "train", 32)
    message = str(error.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message
    assert "network is unreachable" in message and "TFDS" in message
    assert "--config.dataset=folder" in message  # the ImageFolder route
    with pytest.raises(DataError, match="cifar-100-python.tar.gz"):
        load_arrays("cifar100", str(tmp_path), "test", 32)


def test_cifar10_from_tfds_data_source(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets not installed")

    def must_not_download(*args, **kwargs):
        raise AssertionError("fell back to the archive although TFDS has the data")

    monkeypatch.setattr(cifar, "download", must_not_download)
    with tfds.testing.mock_data(num_examples=7):
        ds = load_arrays("cifar10", None, "test", 32)  # TFDS's default data_dir, mocked
    assert ds.images.shape == (7, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ((ds.labels >= 0) & (ds.labels < 10)).all()
    assert ds.num_classes == 10 and len(ds.class_names) == 10


# ---------------------------------------------------------------- digits, fake


def test_digits_split_sizes_and_labels():
    train = load_arrays("digits", None, "train", 32)
    test = load_arrays("digits", None, "test", 32)
    assert train.images.shape == (1500, 32, 32, 3) and test.images.shape == (297, 32, 32, 3)
    assert train.num_classes == 10 and set(np.unique(train.labels)) == set(range(10))
    assert train.images.max() == 255 and train.images.min() == 0
    assert (train.images[..., 0] == train.images[..., 2]).all()  # grey, replicated
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target, minlength=10)
    np.testing.assert_array_equal(np.bincount(train.labels) + np.bincount(test.labels), counts)
    again = load_arrays("digits", None, "train", 32, seed=123)  # the split ignores the seed
    np.testing.assert_array_equal(again.labels, train.labels)


def test_fake_shapes_and_seed():
    a = load_arrays("fake", None, "train", 16, num_classes=7, seed=1)
    assert a.images.shape == (10_000, 16, 16, 3) and a.num_classes == 7
    assert a.labels.max() == 6
    assert len(load_arrays("fake", None, "test", 16)) == 1_000
    np.testing.assert_array_equal(load_arrays("fake", None, "train", 16, seed=1).images, a.images)
    assert not np.array_equal(load_arrays("fake", None, "train", 16, seed=2).images, a.images)


def test_registry_says_which_data_sets_stay_in_memory():
    def in_memory(name: str, size: int) -> bool:
        return dataset_spec(name).in_memory(size)

    assert in_memory("cifar10", 32) and in_memory("digits", 224) and in_memory("fake", 224)
    assert in_memory("folder", 64) and not in_memory("folder", 96)
    assert not in_memory("imagenet2012", 224)
    assert [dataset_spec(n).num_classes for n in ("cifar10", "cifar100", "imagenet2012")] == [
        10, 100, 1000,
    ]  # fmt: skip


# ---------------------------------------------------------------- on-device ops


def _numpy_crop_flip(images, offsets, flips, padding):
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    h, w = images.shape[1:3]
    out = []
    for image, (top, left), flip in zip(padded, offsets, flips, strict=True):
        crop = image[top : top + h, left : left + w]
        out.append(crop[:, ::-1] if flip else crop)
    return np.stack(out)


def test_crop_and_flip_matches_numpy_reference():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    offsets = np.array([[0, 8], [3, 5], [8, 0]])
    flips = np.array([True, False, True])
    got = jax.jit(crop_and_flip, static_argnums=3)(images, offsets, flips, 4)
    np.testing.assert_array_equal(np.asarray(got), _numpy_crop_flip(images, offsets, flips, 4))


def test_augment_cifar_is_random_translation_and_flip():
    n = 256
    images = np.random.default_rng(1).integers(1, 256, (n, 32, 32, 3), dtype=np.uint8)
    key = jax.random.key(0)
    out = np.asarray(jax.jit(augment_cifar)(key, images))
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(augment_cifar(key, images)), out)
    assert not np.array_equal(np.asarray(augment_cifar(jax.random.key(1), images)), out)
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    # windows[i, top, left] is the 32x32 crop of padded image i at (top, left).
    windows = np.lib.stride_tricks.sliding_window_view(padded, (32, 32), axis=(1, 2))
    windows = windows.transpose(0, 1, 2, 4, 5, 3)
    flipped = 0
    for i in range(n):
        plain = (windows[i] == out[i]).all(axis=(2, 3, 4))
        mirrored = (windows[i] == out[i][:, ::-1]).all(axis=(2, 3, 4))
        assert plain.sum() + mirrored.sum() == 1, f"example {i} is not one crop of its padding"
        flipped += int(mirrored.any())
    assert 0.4 * n < flipped < 0.6 * n


def test_normalize():
    images = np.random.default_rng(2).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    got = normalize(jnp.asarray(images), mean, std, jnp.bfloat16)
    assert got.dtype == jnp.bfloat16
    want = (images / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2, atol=1e-2)
    exact = normalize(jnp.asarray(images), mean, std, jnp.float32)
    np.testing.assert_allclose(np.asarray(exact), want, rtol=1e-5, atol=1e-5)


def test_epoch_permutation():
    a = epoch_permutation(1000, seed=3, epoch=0)
    np.testing.assert_array_equal(np.sort(a), np.arange(1000))
    np.testing.assert_array_equal(a, epoch_permutation(1000, seed=3, epoch=0))
    assert not np.array_equal(a, epoch_permutation(1000, seed=3, epoch=1))
    assert not np.array_equal(a, epoch_permutation(1000, seed=4, epoch=0))


# ---------------------------------------------------------------- host image ops


def test_random_resized_box_stays_in_range():
    rng = np.random.default_rng(0)
    for width, height in [(500, 375), (300, 500), (64, 64)]:
        for _ in range(200):
            left, top, right, bottom = random_resized_box(width, height, rng)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            area = (right - left) * (bottom - top) / (width * height)
            assert 0.07 < area <= 1.0
            assert 3 / 4 - 0.05 < (right - left) / (bottom - top) < 4 / 3 + 0.05


def test_eval_crop_is_resize_then_centre_crop(tmp_path):
    y, x = np.mgrid[0:300, 0:400]
    pixels = np.stack([x * 255 // 399, y * 255 // 299, (x + y) * 255 // 698], -1).astype(np.uint8)
    _save(tmp_path / "a.png", pixels)
    _save(tmp_path / "a.jpg", pixels, quality=95)
    reference = Image.fromarray(pixels).resize((341, 256), Image.Resampling.BILINEAR)
    reference = np.asarray(reference)[16:240, 58:282].astype(int)  # centre 224
    png = eval_crop(str(tmp_path / "a.png"), 224).astype(int)
    assert png.shape == (224, 224, 3) and np.abs(png - reference).mean() < 1.0
    jpg = eval_crop(str(tmp_path / "a.jpg"), 32).astype(int)  # DCT-domain downscale path
    small = np.asarray(Image.fromarray(pixels).resize((49, 37), Image.Resampling.BILINEAR))
    assert np.abs(jpg - small[2:34, 8:40].astype(int)).mean() < 6.0


def test_train_crop_is_the_box_resized_then_maybe_flipped(tmp_path):
    """OpenCV's decode (full or 1/2..1/8 scale in the DCT domain) and bilinear resize give
    the PIL crop of the same box; the RNG draws box then flip, whatever the input form."""
    y, x = np.mgrid[0:600, 0:800]
    pixels = np.stack([x * 255 // 799, y * 255 // 599, (x + y) * 255 // 1398], -1).astype(np.uint8)
    _save(tmp_path / "a.jpg", pixels, quality=95)
    encoded = (tmp_path / "a.jpg").read_bytes()
    for size in (224, 64, 16):  # 16: the box shrinks >= 8x, decoded at 1/8 scale
        for seed in range(6):
            rng = np.random.default_rng(seed)
            box = random_resized_box(800, 600, rng)
            flip = rng.random() < 0.5
            reference = Image.fromarray(pixels).resize((size, size), Image.BILINEAR, box=box)
            reference = np.asarray(reference)[:, ::-1] if flip else np.asarray(reference)
            for data in (encoded, str(tmp_path / "a.jpg"), pixels):
                out = train_crop(data, size, np.random.default_rng(seed))
                assert out.shape == (size, size, 3) and out.dtype == np.uint8
                assert np.abs(out.astype(int) - reference).mean() < 4.0, (size, seed, type(data))


def test_train_crop_names_a_file_it_cannot_decode():
    with pytest.raises(OSError):  # PIL reads the header first: not an image at all
        train_crop(b"not a jpeg", 32, np.random.default_rng(0))
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG")
    with pytest.raises(ValueError, match="cannot decode"):  # a valid header, truncated body
        train_crop(buffer.getvalue()[:1000], 32, np.random.default_rng(0))


def test_training_crops_refuse_images_too_large_or_too_long():
    """The predict guard serves the data sets: from the header, before any decoding."""
    from resnet_flax.io.transforms import ImageSizeError

    strip = io.BytesIO()
    Image.new("L", (20000, 1)).save(strip, "PNG")
    for crop in (
        lambda data: train_crop(data, 32, np.random.default_rng(0)),
        lambda data: eval_crop(data, 32),
    ):
        with pytest.raises(ImageSizeError, match="20000x1 pixels has an aspect ratio"):
            crop(strip.getvalue())
    with pytest.raises(DataError, match=r"Cannot decode x.png: .*aspect ratio"):
        decoded(eval_crop, "x.png", strip.getvalue(), 32)


# ---------------------------------------------------------------- streaming


def _colour_tree(root: Path, counts: dict[str, int]) -> list[np.ndarray]:
    """JPEGs of 300-500 px, each one distinct solid colour (its identity after any crop)."""
    rng = np.random.default_rng(0)
    colours = [np.array([40 + 60 * (i % 4), 40 + 60 * (i // 4), 90]) for i in range(16)]
    for split, n in counts.items():
        for i in range(n):
            width, height = rng.integers(300, 501, 2)
            pixels = np.broadcast_to(colours[i].astype(np.uint8), (height, width, 3))
            _save(root / split / f"class{i % 3}" / f"{i:02d}.jpg", pixels.copy(), quality=95)
    return colours


def _identify(batch_images: np.ndarray, colours: list[np.ndarray]) -> list[int]:
    means = batch_images.reshape(len(batch_images), -1, 3).mean(1)
    return [int(np.argmin(np.abs(np.array(colours) - m).sum(1))) for m in means]


def _take(stream, n):
    batches = [next(stream) for _ in range(n)]
    stream.close()
    return batches


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    return root, _colour_tree(root, {"train": 12, "val": 9})


def test_stream_train_deterministic_resumable_sharded(jpeg_tree):
    root, colours = jpeg_tree
    common = dict(train=True, global_batch_size=4)
    spec = StreamSpec("folder", str(root), "train", 32, seed=0, num_workers=0)
    with_workers = _take(make_stream(replace(spec, num_workers=2), **common), 6)
    in_process = _take(make_stream(spec, **common), 6)
    for batch in with_workers:
        assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
        assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
        assert set(batch) == {"image", "label"}
    for a, b in zip(with_workers, in_process, strict=True):  # same batches, any worker count
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])

    resumed = _take(make_stream(spec, **common, start_step=4), 2)
    for a, b in zip(with_workers[4:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    other = _take(make_stream(replace(spec, seed=1), **common), 1)
    assert not np.array_equal(other[0]["image"], with_workers[0]["image"])

    ids = [i for batch in with_workers for i in _identify(batch["image"], colours)]
    labels = np.concatenate([batch["label"] for batch in with_workers])
    np.testing.assert_array_equal(labels, [i % 3 for i in ids])
    assert sorted(ids[:12]) == list(range(12)) and sorted(ids[12:]) == list(range(12))
    assert ids[:12] != ids[12:], "the second epoch is not reshuffled"

    shards = []
    for index in (0, 1):
        stream = make_stream(
            spec, train=True, global_batch_size=4, process_index=index, process_count=2
        )
        batches = _take(stream, 3)
        assert all(batch["image"].shape == (2, 32, 32, 3) for batch in batches)
        shards.append({i for batch in batches for i in _identify(batch["image"], colours)})
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(12))


def test_stream_without_augment_trains_on_the_eval_crop(tmp_path):
    """augment=False: each training image is its file's eval crop, not a random crop."""
    rng = np.random.default_rng(0)
    for i in range(4):
        _save(
            tmp_path / "train" / f"c{i % 2}" / f"{i}.png",
            rng.integers(0, 256, (60, 80, 3), np.uint8),
        )
    files = sorted((tmp_path / "train").glob("*/*.png"))
    crops = [eval_crop(str(p), 32) for p in files]

    def first_epoch(augment: bool) -> dict[str, np.ndarray]:
        spec = StreamSpec("folder", str(tmp_path), "train", 32, augment=augment, num_workers=0)
        stream = make_stream(spec, train=True, global_batch_size=4)
        return _take(stream, 1)[0]

    plain = first_epoch(False)
    assert set(plain) == {"image", "label"}
    found = [[np.array_equal(image, crop) for crop in crops] for image in plain["image"]]
    assert all(sum(row) == 1 for row in found)
    order = [row.index(True) for row in found]
    assert sorted(order) == [0, 1, 2, 3]
    assert [int(files[i].parent.name[1:]) for i in order] == plain["label"].tolist()
    augmented = first_epoch(True)["image"]
    assert not any(np.array_equal(image, crop) for image in augmented for crop in crops)


def test_stream_eval_covers_each_example_once(jpeg_tree):
    root, _ = jpeg_tree
    info = stream_info("folder", str(root), "val")
    assert info[:2] == (9, 3) and len(info.class_names) == 3
    assert stream_info("imagenet2012", str(root), "validation") == info  # val/ stands in
    assert stream_info("folder", str(root), "val[:5]").size == 5
    files = sorted((root / "val").glob("*/*.jpg"), key=lambda p: (p.parent.name, p.name))
    expected = {p.name: eval_crop(str(p), 32) for p in files}
    seen = []
    for index, workers in ((0, 2), (1, 0)):
        batches = list(
            make_stream(
                StreamSpec("folder", str(root), "val", 32, num_workers=workers),
                train=False, global_batch_size=4, process_index=index, process_count=2,
            )
        )  # fmt: skip
        assert len(batches) == 3  # 9 examples padded to 12 = 3 global batches of 4
        for batch in batches:
            assert batch["image"].shape == (2, 32, 32, 3) and batch["mask"].dtype == bool
            for image, real in zip(batch["image"], batch["mask"], strict=True):
                if not real:
                    assert not image.any()
                    continue
                names = [n for n, want in expected.items() if np.array_equal(image, want)]
                assert len(names) == 1
                seen += names
    assert sorted(seen) == sorted(expected)


# ---------------------------------------------------------------- errors


def test_error_messages(tmp_path):
    with pytest.raises(DataError, match=r"Unknown dataset 'cifar'\. Did you mean 'cifar10'"):
        load_arrays("cifar", None, "train", 32)
    with pytest.raises(DataError, match="Unknown split 'validation'.*'test', 'train'"):
        load_arrays("digits", None, "validation", 32)
    with pytest.raises(DataError, match="Cannot read split"):
        load_arrays("digits", None, "train[a:b]", 32)
    with pytest.raises(DataError, match="needs a data_dir"):
        load_arrays("folder", None, "train", 32)
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"{missing} does not exist"):
        load_arrays("folder", str(missing), "train", 32)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="Unknown split 'val'.*'train'"):
        load_arrays("folder", str(tmp_path), "val", 32)
    with pytest.raises(DataError, match="has no class folders"):
        load_arrays("folder", str(tmp_path), "train", 32)
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="No images .* class folder.*: cat"):
        load_arrays("folder", str(tmp_path), "train", 32)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    with pytest.raises(DataError, match="Cannot decode .*broken.jpg"):
        load_arrays("folder", str(tmp_path), "train", 32)
    spec = StreamSpec("folder", str(tmp_path), "train", 64, num_workers=0)
    stream = make_stream(spec, train=True, global_batch_size=1)
    with pytest.raises(DataError, match="Cannot decode .*broken.jpg"):
        next(stream)
    with pytest.raises(DataError, match="10 classes but num_classes=100"):
        load_arrays("digits", None, "train", 32, num_classes=100)
    with pytest.raises(DataError, match="stream it with make_stream"):
        load_arrays("imagenet2012", str(tmp_path), "train", 224)
    with pytest.raises(DataError, match="load it with load_arrays"):
        make_stream(StreamSpec("cifar10", None, "train", 32), train=True, global_batch_size=8)
    with pytest.raises(DataError, match="multiple of the process count 3"):
        make_stream(
            StreamSpec("folder", str(tmp_path), "train", 32),
            train=True, global_batch_size=8, process_count=3,
        )  # fmt: skip
    with pytest.raises(DataError, match="imagenet2012 needs a data_dir.*ImageFolder layout"):
        stream_info("imagenet2012", None, "train")


def test_default_worker_count_leaves_one_core_per_local_device(monkeypatch):
    from train.data import default_num_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert default_num_workers(1) == 15  # one GPU on a 16-core host
    assert default_num_workers(8) == 8
    assert default_num_workers(32) == 1  # never none


def test_sixteen_bit_images_keep_their_values(tmp_path) -> None:
    """A 16-bit grayscale PNG: PIL's convert("RGB") (torchvision's loader) clips it to 255,
    nearly all white; ours keeps the high byte, as OpenCV does on the training path."""
    import cv2

    from resnet_flax.io.transforms import load_image
    from train.data.images import eval_crop

    ramp = (np.arange(40 * 48).reshape(40, 48) * 34).astype(np.uint16)  # 0 .. 65246
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    expected = (ramp >> 8).astype(np.uint8)
    loaded = np.asarray(load_image(tmp_path / "deep.png"))
    np.testing.assert_array_equal(loaded, np.repeat(expected[..., None], 3, axis=-1))
    assert np.asarray(Image.open(tmp_path / "deep.png").convert("RGB")).mean() > 250  # PIL's
    opencv = cv2.imdecode(
        np.frombuffer((tmp_path / "deep.png").read_bytes(), np.uint8), cv2.IMREAD_COLOR_RGB
    )
    np.testing.assert_array_equal(opencv, loaded)  # the train crop's decoder agrees
    # the folder data set's eval crop (PIL) at the image's own size is the image
    crop = eval_crop((tmp_path / "deep.png").read_bytes(), 40, resize_size=40)
    np.testing.assert_array_equal(crop[..., 0], expected[:, 4:44])
