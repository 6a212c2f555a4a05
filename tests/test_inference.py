"""Inference helpers: preprocessing, class names, weights table, predict CLI, summary, features."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import resnet_flax
from resnet_flax.inference.features import extract_features
from resnet_flax.inference.preprocess import imagenet_classes, preprocess
from resnet_flax.inference.summary import summary
from resnet_flax.io.convert import load_torchvision, save_torchvision
from resnet_flax.io.transforms import PRESETS, EvalTransform
from resnet_flax.io.weights import WEIGHTS, identify, weights_for
from resnet_flax.models.registry import count_parameters

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Real image files at odd sizes: RGB JPEG and PNG, grayscale, RGBA."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    made = []
    for (width, height), mode, name in [
        ((500, 375), "RGB", "landscape.jpg"),
        ((333, 517), "RGB", "portrait.png"),
        ((301, 299), "L", "gray.png"),
        ((640, 480), "RGBA", "alpha.png"),
    ]:
        channels = len(mode)
        yy, xx = np.mgrid[0:height, 0:width]
        smooth = (xx[..., None] * 255 // width + yy[..., None] * np.arange(1, channels + 1)) % 256
        noise = rng.integers(0, 64, (height, width, channels))
        pixels = ((smooth + noise) % 256).astype(np.uint8)
        Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(folder / name)
        made.append(folder / name)
    return made


# --- class names and weights table -------------------------------------------------------------


def test_imagenet_classes() -> None:
    classes = imagenet_classes()
    assert len(classes) == 1000 and len(set(classes)) == 1000 and all(classes)
    assert classes[0] == "tench" and classes[207] == "golden retriever"


def test_imagenet_classes_are_torchvisions() -> None:
    pytest.importorskip("torchvision", reason="compares with torchvision's class names")
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    assert imagenet_classes() == list(_IMAGENET_CATEGORIES)


def test_weights_table_parameter_counts() -> None:
    for name in resnet_flax.TORCHVISION_MODELS:
        entries = [w for w in weights_for(name) if w.source == "torchvision"]
        assert entries, f"no weights listed for {name}"
        count = count_parameters(resnet_flax.create_model(name))
        for entry in entries:
            assert entry.num_params == count, entry.tag


def test_weights_table_is_torchvisions() -> None:
    models = pytest.importorskip("torchvision.models", reason="compares with torchvision's enums")
    expected = {
        (name, e.name): e for name in resnet_flax.TORCHVISION_MODELS
        for e in models.get_model_weights(name)
    }  # fmt: skip
    ours = [w for w in WEIGHTS if w.source == "torchvision"]
    assert {(w.model, w.enum) for w in ours} == set(expected)
    suffixes = {"IMAGENET1K_V1": "tv_in1k", "IMAGENET1K_V2": "tv2_in1k"}
    for w in ours:
        e = expected[(w.model, w.enum)]
        t = e.transforms()
        assert w.suffix == suffixes.get(w.enum, "tv_features")
        assert w.url == e.url
        assert (w.resize_size, w.crop_size) == (t.resize_size[0], t.crop_size[0])
        assert (w.mean, w.std, w.interpolation) == (
            tuple(t.mean),
            tuple(t.std),
            t.interpolation.value,
        )
        assert w.num_params == e.meta["num_params"]
        assert w.features_only == (e.meta["categories"] is None)
        if w.top1 is not None:
            assert (w.top1, w.top5) == tuple(e.meta["_metrics"]["ImageNet-1K"].values())


def test_timm_table_is_timms() -> None:
    """Every timm tag of a model we build (but timm's copies of torchvision's files and
    backbones without a head) is in the table, with timm's preprocessing and class count."""
    timm = pytest.importorskip("timm", reason="compares with timm's pretrained configs")
    from resnet_flax.io.weights import timm_resize

    expected = {
        tag
        for name in (*resnet_flax.TORCHVISION_MODELS, *resnet_flax.TIMM_MODELS)
        for tag in timm.list_pretrained(name + ".*")
        if tag.split(".")[0] == name
        and tag.split(".")[1] not in ("tv_in1k", "tv2_in1k")
        and timm.models.get_pretrained_cfg(tag).num_classes
    }
    timms = [w for w in WEIGHTS if w.source == "timm"]
    assert {w.tag for w in timms} == expected
    for w in timms:
        c = timm.models.get_pretrained_cfg(w.tag)
        size = c.input_size[-1]
        test = c.test_input_size[-1] if c.test_input_size else None
        test_resize = timm_resize(test, c.test_crop_pct or c.crop_pct) if test else None
        assert (w.resize_size, w.crop_size, w.test_resize_size, w.test_crop_size) == (
            timm_resize(size, c.crop_pct), size, test_resize, test
        ), w.tag  # fmt: skip
        assert (w.file, w.enum, w.num_params, w.features_only) == (
            "model.safetensors", None, None, False
        ), w.tag  # fmt: skip
        assert (w.interpolation, w.mean, w.std, w.num_classes) == (
            c.interpolation, tuple(c.mean), tuple(c.std), c.num_classes
        ), w.tag  # fmt: skip
        assert w.top1 is None or 60 < w.top1 < 90 and w.top1 < w.top5 < 100, w.tag


def test_identify_by_file_name() -> None:
    v2 = identify(Path("/home/me/.cache/torch/hub/checkpoints/resnet50-11ad3fa6.pth"))
    assert (v2.tag, v2.enum, v2.resize_size, v2.crop_size) == (
        "resnet50.tv2_in1k",
        "IMAGENET1K_V2",
        232,
        224,
    )
    assert identify("resnet50-0676ba61.pth").resize_size == 256
    assert identify("my_resnet50.pth") is None


# --- preprocessing -----------------------------------------------------------------------------


def test_preprocess_shapes_and_modes(images) -> None:
    batch = preprocess(images)
    assert batch.shape == (4, 224, 224, 3) and batch.dtype == np.float32
    gray = preprocess(images[2])[0]  # grayscale becomes three equal channels
    unnormalised = gray * np.asarray(STD, np.float32) + np.asarray(MEAN, np.float32)
    np.testing.assert_allclose(unnormalised[..., 0], unnormalised[..., 2], atol=1e-6)
    assert PRESETS["V2"](images[0]).shape == (1, 224, 224, 3)


@pytest.mark.parametrize("tag", ["IMAGENET1K_V1", "IMAGENET1K_V2"])
def test_preprocess_equals_weights_transforms(images, tag) -> None:
    models = pytest.importorskip("torchvision.models", reason="compares with torchvision")
    weights = models.ResNet50_Weights[tag]
    ours = identify(weights.url).transforms()(images)
    for image, got in zip(images, ours, strict=True):
        with Image.open(image) as pil:
            want = weights.transforms()(pil.convert("RGB")).permute(1, 2, 0).numpy()
        assert np.abs(got - want).max() <= 1e-6, image.name


@pytest.mark.parametrize("resize, crop", [(256, 224), (232, 224), (200, 224), (300, 257)])
def test_preprocess_equals_classic_compose(images, resize, crop) -> None:
    pytest.importorskip("torchvision", reason="compares with torchvision")
    from torchvision import transforms as T

    compose = T.Compose(
        [T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(MEAN, STD)]
    )
    ours = preprocess(images, resize, crop)
    for image, got in zip(images, ours, strict=True):
        with Image.open(image) as pil:
            want = compose(pil.convert("RGB")).permute(1, 2, 0).numpy()
        assert np.abs(got - want).max() <= 1e-6, f"{image.name} at {resize}/{crop}"


def test_preprocess_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="image not found: .*nope.jpg"):
        preprocess(tmp_path / "nope.jpg")
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(OSError, match="cannot read .*notes.jpg"):
        preprocess(tmp_path / "notes.jpg")
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        EvalTransform(interpolation="cubic")(Image.new("RGB", (8, 8)))
    with pytest.raises(ValueError, match="crop_size must be a positive integer"):
        preprocess(Image.new("RGB", (8, 8)), crop_size=0)


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` (its pixels never follow)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_images_too_large_to_decode_or_resize_are_refused(tmp_path) -> None:
    """A 1x20000 strip (a few hundred bytes) would resize to 256x5,120,000; a header declaring
    30000x30000 is Pillow's decompression bomb; a big resize of a long image is bounded too."""
    from resnet_flax.io.transforms import ImageSizeError

    Image.new("L", (1, 20000)).save(tmp_path / "strip.png")
    with pytest.raises(ImageSizeError, match=r"strip.png'?: 1x20000 pixels has an aspect ratio"):
        preprocess(tmp_path / "strip.png")
    with pytest.raises(ImageSizeError, match=r"bomb.png.*decompression bomb"):
        preprocess(png_declaring(tmp_path / "bomb.png", 30000, 30000))
    with pytest.raises(ImageSizeError, match=r"bomb.png.*Pillow's decompression-bomb limit"):
        preprocess(png_declaring(tmp_path / "bomb.png", 10000, 10000))  # over 1x, under 2x
    with pytest.raises(ImageSizeError, match=r"resizing the shorter side of 40x1600 .*to 2000"):
        preprocess(Image.new("RGB", (40, 1600)), resize_size=2000, crop_size=224)
    assert preprocess(Image.new("RGB", (40, 1600)), resize_size=256).shape == (1, 224, 224, 3)


# --- features ----------------------------------------------------------------------------------


def _random_variables(name: str, seed: int = 0) -> tuple[Any, dict]:
    """``create_model(name)`` and random variables of a trained net's scale, drawn with NumPy
    (compiling ``model.init`` takes far longer on CPU than these tests may)."""
    model = resnet_flax.create_model(name)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    rng = np.random.default_rng(seed)

    def draw(path, spec):
        leaf, shape = path[-1].key, spec.shape
        if leaf == "kernel":
            return rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[:-1]))
        if leaf == "var":
            return rng.uniform(0.5, 1.5, shape)
        if leaf == "num_batches_tracked":
            return np.zeros(shape, spec.dtype)
        return rng.uniform(0.8, 1.2, shape) if leaf == "scale" else rng.normal(0, 0.1, shape)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    return model, jax.tree.map(lambda a, s: jnp.asarray(a, s.dtype), variables, shapes)


def test_features_resnet50_shapes() -> None:
    model = resnet_flax.create_model("resnet50")
    for train in (False, True):
        x = jnp.zeros((1, 224, 224, 3))
        feats = jax.eval_shape(
            lambda x, t=train: extract_features(model, model.init(jax.random.key(0), x), x, t), x
        )
        assert {name: f.shape[1:] for name, f in feats.items()} == {
            "stem": (56, 56, 64),
            "layer1": (56, 56, 256),
            "layer2": (28, 28, 512),
            "layer3": (14, 14, 1024),
            "layer4": (7, 7, 2048),
            "pre_logits": (2048,),
        }


def test_features_pre_logits_give_the_logits() -> None:
    model, variables = _random_variables("resnet50")
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    feats, logits = jax.jit(
        lambda v, x: (extract_features(model, v, x), model.apply(v, x, train=False))
    )(variables, x)
    fc = variables["params"]["fc"]
    assert feats["layer4"].shape == (2, 2, 2, 2048)
    np.testing.assert_allclose(
        feats["pre_logits"] @ fc["kernel"] + fc["bias"], logits, rtol=1e-4, atol=1e-4
    )


def test_features_vgg() -> None:
    model = resnet_flax.create_model("vgg11")
    x = jnp.zeros((2, 224, 224, 3))
    shapes = jax.eval_shape(lambda: extract_features(model, model.init(jax.random.key(0), x), x))
    assert {k: v.shape for k, v in shapes.items()} == {
        "features": (2, 7, 7, 512),
        "pre_logits": (2, 4096),
    }


def test_features_equal_torchvision_resnet18() -> None:
    torch = pytest.importorskip("torch", reason="compares with torchvision")
    from torchvision.models import resnet18
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    net = resnet18().eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    model, variables = load_torchvision("resnet18", net.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    nodes = {"maxpool": "stem", **{f"layer{i}": f"layer{i}" for i in range(1, 5)}}
    nodes["flatten"] = "pre_logits"
    with torch.no_grad():
        want = create_feature_extractor(net, nodes)(torch.from_numpy(x))
    got = extract_features(model, variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    for name, value in want.items():
        value = value.numpy()
        value = value.transpose(0, 2, 3, 1) if value.ndim == 4 else value
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4, err_msg=name)


# --- summary -----------------------------------------------------------------------------------


def _totals(text: str) -> dict[str, str]:
    return dict(re.findall(r"^(Total params|batch_stats entries):\s+([\d,]+)$", text, re.M))


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_summary_totals_are_torchvisions(name, capsys) -> None:
    text = summary(name)
    assert capsys.readouterr().out.strip() == text.strip()
    totals = _totals(text)
    assert int(totals["Total params"].replace(",", "")) == weights_for(name)[0].num_params
    torchvision = pytest.importorskip("torchvision", reason="counts torchvision's own model")
    net = getattr(torchvision.models, name)()
    assert int(totals["Total params"].replace(",", "")) == sum(p.numel() for p in net.parameters())
    buffers = sum(b.numel() for b in net.buffers())
    assert int(totals["batch_stats entries"].replace(",", "")) == buffers


def test_summary_rows_and_errors() -> None:
    text = summary("resnet152", depth=2)
    assert re.search(r"^layer4_2\s+\(1, 7, 7, 2048\)", text, re.M)
    assert re.search(r"^  downsample_1\s+\(1, 7, 7, 2048\)\s+4,096$", text, re.M)
    assert (
        text.index("layer1_0") < text.index("layer2_0") < text.index("layer3_10") < text.index("fc")
    )
    with pytest.raises(ValueError, match="unknown model 'resnet51'. Did you mean"):
        summary("resnet51")
    with pytest.raises(ValueError, match="depth must be at least 1"):
        summary("resnet18", depth=0)


# --- predict CLI -------------------------------------------------------------------------------


def _cli(*args: str, block_torch: bool = False) -> subprocess.CompletedProcess:
    """Run the predict CLI in a fresh interpreter; ``block_torch`` makes ``import torch`` fail."""
    prelude = "import sys; sys.modules['torch'] = None; " if block_torch else "import sys; "
    code = prelude + "from resnet_flax.inference.predict import main; sys.exit(main(sys.argv[1:]))"
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, env=env
    )


def _parse(stdout: str) -> dict[str, list[tuple[str, float]]]:
    result, current = {}, None
    for line in stdout.splitlines():
        if match := re.fullmatch(r"  \d+\. (.+?)\s+(\d+\.\d\d)%", line):
            result[current].append((match[1], float(match[2])))
        else:
            current = line
            result[current] = []
    return result


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    """A random-weight resnet18 saved as torchvision's .pth, its head scaled down so that
    the top classes share the probability."""
    _, variables = _random_variables("resnet18", seed=3)
    variables["params"]["fc"]["kernel"] = variables["params"]["fc"]["kernel"] * 0.05
    path = tmp_path_factory.mktemp("weights") / "my_resnet18.pth"
    save_torchvision(path, "resnet18", variables)
    return path


def test_predict_cli_matches_torchvision(resnet18_file, images) -> None:
    run = _cli("--model", "resnet18", "--weights", str(resnet18_file), *map(str, images[:2]),
               block_torch=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    printed = _parse(run.stdout)
    assert list(printed) == [str(p) for p in images[:2]]
    for rows in printed.values():
        assert len(rows) == 5
        probs = [p for _, p in rows]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.01
    for block in re.split(r"^\S.*\n", run.stdout, flags=re.M)[1:]:
        assert len({len(line) for line in block.splitlines()}) == 1  # aligned

    torch = pytest.importorskip("torch", reason="compares with torchvision")
    from torchvision import transforms as T
    from torchvision.models import resnet18

    net = resnet18().eval()
    net.load_state_dict(torch.load(resnet18_file, weights_only=True))
    compose = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    classes = imagenet_classes()
    for image in images[:2]:
        with Image.open(image) as pil, torch.no_grad():
            probs = net(compose(pil.convert("RGB"))[None]).softmax(-1)[0]
        top = probs.topk(5)
        rows = printed[str(image)]
        assert [name for name, _ in rows] == [classes[i] for i in top.indices]
        np.testing.assert_allclose([p for _, p in rows], 100 * top.values.numpy(), atol=0.006)


def test_predict_cli_errors(resnet18_file, images, tmp_path) -> None:
    missing = _cli("--model", "resnet18", "--weights", str(resnet18_file), "nope.jpg")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: image not found: 'nope.jpg'"

    unknown = _cli("--model", "resnet51", "--weights", str(resnet18_file), str(images[0]))
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "error: unknown model 'resnet51'. Did you mean" in unknown.stderr

    named = tmp_path / "resnet18-f37072fd.pth"  # torchvision's name: the model is read from it
    os.symlink(resnet18_file, named)
    wrong = _cli("--model", "resnet34", "--weights", str(named), str(images[0]))
    assert wrong.returncode == 2
    assert (
        "holds torchvision's resnet18 weights, not resnet34: use --model resnet18" in wrong.stderr
    )


def test_predict_cli_refuses_bad_images_and_sizes(resnet18_file, images, tmp_path, capsys):
    from resnet_flax.inference.predict import main

    bomb = png_declaring(tmp_path / "bomb.png", 30000, 30000)
    cases = [
        ([str(bomb)], "decompression bomb"),
        ([str(tmp_path)], f"image '{tmp_path}' is a directory: name the files in it"),
        ([str(images[0]), "--crop", "0"], "--crop must be a positive number of pixels, got 0"),
        ([str(images[0]), "--resize", "0"], "--resize must be a positive number of pixels"),
    ]
    for args, message in cases:
        assert main(["--model", "resnet18", "--weights", str(resnet18_file), *args]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, last


def test_predict_preprocessing_warning_and_overrides(resnet18_file, images) -> None:
    """A file no table entry names: a warning with the preprocessing used and how to choose
    another; --crop-pct and --interpolation choose it (timm's way) and silence the warning."""
    plain = _cli("--model", "resnet18", "--weights", str(resnet18_file), str(images[0]))
    assert plain.returncode == 0, plain.stderr
    assert "warning: " in plain.stderr and "torchvision's V1 preset (resize 256, crop 224" in (
        plain.stderr
    )
    assert "--crop-pct" in plain.stderr and "--interpolation" in plain.stderr
    timm_style = _cli("--model", "resnet18", "--weights", str(resnet18_file), "--crop-pct",
                      "0.95", "--interpolation", "bicubic", str(images[0]))  # fmt: skip
    assert timm_style.returncode == 0, timm_style.stderr
    assert "warning" not in timm_style.stderr
    assert "resize 235, crop 224, bicubic" in timm_style.stderr  # floor(224 / 0.95)
    bad = _cli("--model", "resnet18", "--weights", str(resnet18_file), "--crop-pct", "1.5",
               str(images[0]))  # fmt: skip
    assert bad.returncode == 2 and "error: --crop-pct must be in (0, 1]" in bad.stderr


def test_every_timm_entry_has_timms_eval_transform() -> None:
    """Every timm entry of the table (resize, crop, interpolation, mean, std, at the train
    and the test size) is what timm's create_transform builds from the tag's config; the
    images below check that the same numbers give the same pixels."""
    timm = pytest.importorskip("timm", reason="needs timm")
    from timm.data import create_transform, resolve_data_config

    from resnet_flax.io.weights import WEIGHTS

    entries = [w for w in WEIGHTS if w.source == "timm"]
    assert len(entries) >= 155  # timm's 172 tags less its 17 copies of torchvision's files
    for entry in entries:
        cfg = timm.models.get_pretrained_cfg(entry.tag).to_dict()
        for test in (False, True):
            config = resolve_data_config(pretrained_cfg=cfg, use_test_size=test)
            resize, crop, *_ = create_transform(**config).transforms
            ours = (entry.test_resize_size, entry.test_crop_size) if test else (None, None)
            size = (ours[0] or entry.resize_size, ours[1] or entry.crop_size)
            assert (resize.size, crop.size) == (size[0], (size[1], size[1])), entry.tag
            assert resize.interpolation.value == entry.interpolation, entry.tag
            assert tuple(config["mean"]) == entry.mean and tuple(config["std"]) == entry.std


@pytest.mark.parametrize(
    "tag",
    [
        "resnet50d.a1_in1k",
        "resnet18d.ra4_e3600_r224_in1k",
        "resnetrs50.tf_in1k",
        "resnet50.a1h_in1k",
        "resnetv2_50x1_bit.goog_in21k_ft_in1k",
        "seresnextaa101d_32x8d.sw_in12k_ft_in1k_288",
        "senet154.gluon_in1k",
    ],
)
def test_timm_entries_transform_as_timm_does(images, tag) -> None:
    """Each timm entry's transforms() (and at its test size) against timm's create_transform
    on the resolved config: bicubic at crop_pct 0.95, 0.9, 0.91 and 0.9 (176 px), BiT's
    bilinear 448 px at crop_pct 1.0, timm's 288 px fine-tune at crop_pct 0.95 (320 to test),
    gluon's 0.875, with the mean/std they carry."""
    timm = pytest.importorskip("timm", reason="needs timm")
    from timm.data import create_transform, resolve_data_config

    from resnet_flax.io.weights import by_tag

    entry = by_tag(tag)
    cfg = timm.models.get_pretrained_cfg(tag).to_dict()
    for test in (False, True):
        config = resolve_data_config(pretrained_cfg=cfg, use_test_size=test)
        transform = create_transform(**config)
        theirs = np.stack(
            [transform(Image.open(p).convert("RGB")).numpy().transpose(1, 2, 0) for p in images]
        )
        np.testing.assert_array_equal(entry.transforms(test)(images), theirs)


def test_preprocess_takes_a_weights_tag(images) -> None:
    from resnet_flax.io.hub import resolve

    for tag in ("resnet50.tv2_in1k", "resnet50.a1_in1k"):
        expected = resolve(tag).transforms()(images)
        np.testing.assert_array_equal(preprocess(images, weights=tag), expected)
    with pytest.raises(ValueError, match="weights= or the transform's settings, not both"):
        preprocess(images, 232, weights="resnet50.tv2_in1k")
    with pytest.raises(ValueError, match="unknown weights tag 'resnet50.a9_in1k'"):
        preprocess(images, weights="resnet50.a9_in1k")


def test_bilinear_crop_pct_is_timms_transform(images) -> None:
    pytest.importorskip("timm", reason="needs timm")
    from timm.data import create_transform

    transform = create_transform(
        input_size=(3, 224, 224), interpolation="bilinear", crop_pct=0.875, mean=MEAN, std=STD
    )
    theirs = np.stack(
        [transform(Image.open(p).convert("RGB")).numpy().transpose(1, 2, 0) for p in images]
    )
    ours = EvalTransform(256, 224, "bilinear", MEAN, STD)(images)  # floor(224 / 0.875) = 256
    np.testing.assert_array_equal(ours, theirs)
