"""The training loop end to end on a tiny run: resume exactness, signals, NaN, evaluation.

resnet20 at 16x16 on 128 digits (4 steps per epoch, 2 epochs: conftest's ``tiny_config``).
Compiled programs go to a per-session persistent cache, so every run after the first skips
most of the compilation.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_flax import create_model
from resnet_flax.models.registry import init_variables
from train import loop
from train.checkpoint import Checkpoints, load_variables
from train.data import DataError, dataset_spec, load_arrays, normalize
from train.distributed import make_mesh
from train.state import pretrained_variables


def final_variables(workdir: Path):
    variables, meta, step = load_variables(workdir, make_mesh())
    return jax.device_get(variables), meta, step


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_config) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return workdir, loop.train_and_evaluate(tiny_config(), workdir)


def test_uninterrupted_run(uninterrupted, run_records):
    workdir, result = uninterrupted
    assert result["step"] == 8 and not result["interrupted"]
    assert json.loads((workdir / "config.json").read_text())["name"] == "tiny"
    lines = run_records(workdir)
    assert sorted(k for k in lines if k[0] == "eval") == [("eval", 4), ("eval", 8)]
    assert sorted(k[1] for k in lines if k[0] == "train") == [2, 4, 6, 8]
    train = lines["train", 8]
    assert {"loss", "accuracy", "lr", "epoch"} <= train.keys() and train["epoch"] == 2.0
    assert result["eval"]["accuracy"] == lines["eval", 8]["accuracy"]
    assert np.isfinite(result["eval"]["loss"])
    # the best-by-accuracy step and the latest two are kept
    kept = Checkpoints(workdir / "checkpoints", read_only=True).all_steps()
    assert kept == sorted({4, 8, result["best_step"]})


def test_max_steps_then_resume_is_exact(uninterrupted, tmp_path, tiny_config, same_run):
    """Stopped mid-epoch at step 3 by max_steps, relaunched: bitwise the uninterrupted run."""
    stopped = loop.train_and_evaluate(tiny_config(max_steps=3), tmp_path)
    assert stopped["step"] == 3 and stopped["interrupted"] and stopped["signal"] is None
    assert Checkpoints(tmp_path / "checkpoints", read_only=True).latest_step() == 3
    resumed = loop.train_and_evaluate(tiny_config(), tmp_path)
    assert resumed["step"] == 8 and not resumed["interrupted"]
    same_run(uninterrupted[0], tmp_path, steps=8)


def test_sigterm_saves_then_resume_is_exact(
    uninterrupted, tmp_path, monkeypatch, tiny_config, same_run, sigterm_after
):
    """SIGTERM during step 2's logging: checkpoint at step 2, exit; resuming is exact."""
    sigterm_after(2)
    stopped = loop.train_and_evaluate(tiny_config(), tmp_path)
    assert stopped["step"] == 2 and stopped["interrupted"] and stopped["signal"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    monkeypatch.undo()
    assert Checkpoints(tmp_path / "checkpoints", read_only=True).all_steps() == [2]
    loop.train_and_evaluate(tiny_config(), tmp_path)
    same_run(uninterrupted[0], tmp_path, steps=8)


def test_nonfinite_loss_stops_without_saving(tmp_path, tiny_config):
    config = tiny_config(learning_rate=1e38, checkpoint_every_steps=1, augment=False)
    with pytest.raises(loop.TrainingDiverged, match=r"NaN/inf at step \d+") as error:
        loop.train_and_evaluate(config, tmp_path)
    bad = int(re.search(r"at step (\d+)", str(error.value)).group(1))
    steps = Checkpoints(tmp_path / "checkpoints", read_only=True).all_steps()
    assert steps and max(steps) == bad - 1  # every good step saved, the bad one not
    variables, _, _ = final_variables(tmp_path)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))
    assert f"last good checkpoint is step {bad - 1}" in str(error.value)


def test_evaluate_sees_every_example_once(uninterrupted, tiny_config):
    workdir, result = uninterrupted
    config = tiny_config()
    metrics = loop.evaluate(config, workdir)
    assert metrics["step"] == 8 and metrics["epoch"] == 2.0
    assert metrics["accuracy"] == result["eval"]["accuracy"]
    # the reference: every eval example once, on the host
    variables, _, _ = final_variables(workdir)
    data = load_arrays("digits", None, config.eval_split, config.image_size)
    model = create_model("resnet20", num_classes=10)
    spec = dataset_spec("digits")
    x = normalize(jnp.asarray(data.images), spec.mean, spec.std, jnp.float32)
    log_probs = np.asarray(jax.nn.log_softmax(model.apply(variables, x)))
    correct = int(np.sum(log_probs.argmax(-1) == data.labels))
    assert round(metrics["accuracy"] * len(data)) == correct and len(data) == 80
    loss = -np.mean(log_probs[np.arange(80), data.labels])
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["split"] == "eval"


def test_fine_tune_from_our_checkpoint_with_a_new_head(uninterrupted, tmp_path, tiny_config):
    """pretrained = one of our checkpoint directories, 3 classes: backbone kept, new fc."""
    source, _ = uninterrupted
    config = tiny_config(
        check=False,  # (config.validate accepts pretrained files only)
        pretrained=str(source / "checkpoints"), freeze_backbone=True, dataset="fake",
        num_classes=3, train_split="train[:96]", eval_split="test[:32]", max_steps=1,
    )  # fmt: skip
    loop.train_and_evaluate(config, tmp_path)
    old, _, _ = final_variables(source)
    new, _, _ = final_variables(tmp_path)
    assert new["params"]["fc"]["kernel"].shape == (64, 3)
    for name in ("conv1", "layer3_2"):  # frozen: exactly the pretrained values
        pairs = (jax.tree.leaves(new["params"][name]), jax.tree.leaves(old["params"][name]))
        for a, b in zip(*pairs, strict=True):
            np.testing.assert_array_equal(a, b)


def test_image_size_the_model_cannot_take(tmp_path, tiny_config):
    config = tiny_config(model="lenet5", image_size=64, augment=False)
    with pytest.raises(ValueError, match="LeNet5 takes 32x32 images; got 64x64"):
        loop.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_missing_data_dir_is_the_data_error(tmp_path, tiny_config):
    config = tiny_config(dataset="folder", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="nowhere"):
        loop.train_and_evaluate(config, tmp_path)


def test_pretrained_torchvision_file(tmp_path):
    """A torchvision .pth (read by resnet_flax.io.convert) becomes the initial variables."""
    torch = pytest.importorskip("torch", reason="writes the torchvision checkpoint")
    torchvision = pytest.importorskip("torchvision", reason="writes the torchvision checkpoint")
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    model = create_model("resnet18", num_classes=1000)
    fresh = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), init_variables(model, abstract=True)
    )
    variables = pretrained_variables(path, "resnet18", model, fresh, make_mesh())
    weight = torch.load(path)["conv1.weight"].numpy()
    np.testing.assert_array_equal(
        variables["params"]["conv1"]["kernel"], weight.transpose(2, 3, 1, 0)
    )
    assert variables["batch_stats"]["bn1"]["var"].shape == (64,)


def test_pretrained_by_tag(tmp_path, monkeypatch):
    """--config.pretrained=resnet18.tv_in1k: the tag's file, from torch hub's cache here."""
    from resnet_flax.io.convert import save_torchvision
    from resnet_flax.io.hub import resolve

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    model = create_model("resnet18", num_classes=1000)
    saved = init_variables(model, 32, seed=1)
    save_torchvision(cache / resolve("resnet18.tv_in1k").file, "resnet18", saved)
    ten = create_model("resnet18", num_classes=10)
    fresh = jax.device_get(init_variables(ten, 32))
    variables = pretrained_variables("resnet18.tv_in1k", "resnet18", ten, fresh, make_mesh())
    np.testing.assert_array_equal(
        variables["params"]["conv1"]["kernel"], saved["params"]["conv1"]["kernel"]
    )
    assert variables["params"]["fc"]["kernel"].shape == (512, 10)


def test_streamed_folder_resumes_exactly(tmp_path, tiny_config, same_run):
    """A folder at image_size > 64 streams through grain; resuming mid-epoch is exact too.
    Decoded in the trainer's process: the batches are the same with decoding workers
    (tests/test_data.py), whose start is most of a run this small."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 5)):
        for name in ("cat", "dog"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 256, (70, 75, 3), dtype=np.uint8)
                Image.fromarray(image).save(folder / f"{i}.png")
    config = dict(
        dataset="folder", data_dir=str(tmp_path / "data"), train_split="train",
        eval_split="val", image_size=65, num_classes=0, batch_size=8, eval_batch_size=8,
        num_workers=0,
    )  # fmt: skip
    whole = loop.train_and_evaluate(tiny_config(**config), tmp_path / "whole")
    assert whole["step"] == 6 and whole["eval"] is not None  # 24 images: 3 steps an epoch
    loop.train_and_evaluate(tiny_config(max_steps=4, **config), tmp_path / "parts")
    loop.train_and_evaluate(tiny_config(**config), tmp_path / "parts")
    same_run(tmp_path / "whole", tmp_path / "parts", steps=6)


def test_a_second_trainer_on_a_workdir_is_refused(tmp_path, tiny_config):
    """A live holder (a running process) keeps the workdir; a dead one's lock is taken over."""
    import socket
    import subprocess
    import sys

    from train.lock import LOCK_FILE, WorkdirLocked

    def lock_held_by(pid: int) -> None:
        tmp_path.mkdir(exist_ok=True)
        holder = {"pid": pid, "host": socket.gethostname(), "since": 0}
        (tmp_path / LOCK_FILE).write_text(json.dumps(holder))

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_held_by(alive.pid)
        (tmp_path / "config.json").write_text("the live run's")
        before = snapshot(tmp_path)
        message = rf"in use by process {alive.pid} on host {socket.gethostname()}.*--workdir"
        with pytest.raises(WorkdirLocked, match=message):
            loop.train_and_evaluate(tiny_config(max_steps=1), tmp_path)
        assert snapshot(tmp_path) == before  # refused before anything was written
    finally:
        alive.kill()
        alive.wait()
    lock_held_by(alive.pid)  # now a dead process's
    with pytest.warns(UserWarning, match=rf"taking over the lock of process {alive.pid}"):
        result = loop.train_and_evaluate(tiny_config(max_steps=1), tmp_path)
    assert result["step"] == 1 and not (tmp_path / LOCK_FILE).exists()  # released at the end


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) below ``folder``."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, tiny_config) -> Path:
    workdir = tmp_path_factory.mktemp("stopped")
    loop.train_and_evaluate(tiny_config(max_steps=1), workdir)
    return workdir


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(batch_size=16), r"batch_size=32, this config has batch_size=16.*batch_size=32"),
        (dict(model="resnet32"), r"model='resnet20'.*--config.model=resnet20,"),
        (
            dict(model_options={"zero_init_residual": True}),
            r"model_options=\{\}, this config has model_options=\{'zero_init_residual': True\}",
        ),
        (dict(train_split="train[128:256]"), r"--config.train_split=train\[:128\]"),
        (dict(dataset="fake", num_classes=10), r"dataset='digits'.*--config.dataset=digits"),
        (dict(optimizer="adamw"), r"does not fit this config: it (has|has no) train_state\.opt"),
    ],
)
def test_refused_resume_names_the_difference_and_writes_nothing(
    stopped_run, tiny_config, change, message
):
    """Another model, other data or batches: named from the checkpoint's record (not 'no
    readable checkpoint'), and the workdir (config.json included) is left byte-identical."""
    before = snapshot(stopped_run)
    with pytest.raises(loop.CheckpointError, match=message):
        loop.train_and_evaluate(tiny_config(**change), stopped_run)
    assert snapshot(stopped_run) == before


def test_a_resume_refused_for_other_classes(stopped_run, tiny_config, monkeypatch):
    """Same data set name and size, other classes (another folder, say): refused."""
    original = loop.load_arrays

    def renamed(*args, class_names=None, **kwargs):
        data = original(*args, **kwargs)  # both splits: digits' own classes
        data.class_names = [f"n{name}" for name in data.class_names]
        return data

    monkeypatch.setattr(loop, "load_arrays", renamed)
    before = snapshot(stopped_run)
    with pytest.raises(loop.CheckpointError, match=r"10 classes \(0, 1, 2, \.\.\.\).*n0, n1"):
        loop.train_and_evaluate(tiny_config(), stopped_run)
    assert snapshot(stopped_run) == before


def _folder(root: Path, classes: dict[str, list[str]], size: int = 20) -> None:
    """``{split: [class, ...]}``: three PNGs per class, each class a colour of its own."""
    from PIL import Image

    for split, names in classes.items():
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True)
            shade = 40 * (ord(name[0]) % 6)
            for i in range(3):
                Image.new("RGB", (size + i, size), (shade, i, 0)).save(folder / f"{i}.png")


@pytest.mark.parametrize("image_size", [16, 65])  # held in memory, streamed
def test_evaluation_labels_are_the_training_classes_by_name(tmp_path, tiny_config, image_size):
    """val/ holds a subset of train/'s classes: its labels are train's indices, by name."""
    _folder(tmp_path / "data", {"train": ["cat", "dog", "fox"], "val": ["dog", "fox"]})
    config = tiny_config(
        dataset="folder", data_dir=str(tmp_path / "data"), train_split="train",
        eval_split="val", image_size=image_size, num_classes=0, num_workers=0,
        batch_size=3, eval_batch_size=3,
    )  # fmt: skip
    built = loop.build(config)
    assert built.num_classes == 3 and built.class_names == ["cat", "dog", "fox"]
    labels = [
        int(label)
        for batch in built.eval_data.eval_batches()
        for label, real in zip(*jax.device_get((batch.get("label"), batch["mask"])), strict=True)
        if real
    ] if image_size > 64 else list(np.asarray(built.eval_data.data["label"]))  # fmt: skip
    assert sorted(labels) == [1, 1, 1, 2, 2, 2]


def test_an_evaluation_class_training_lacks_is_refused_before_anything_is_written(tmp_path):
    from train import cli

    _folder(tmp_path / "data", {"train": ["cat", "dog"], "val": ["cat", "emu", "dog", "yak"]})
    workdir = tmp_path / "run"
    argv = ["--config", "resnet20_digits", "--workdir", str(workdir), "--config.dataset=folder"]
    argv += [f"--config.data_dir={tmp_path / 'data'}", "--config.eval_split=val"]
    argv += ["--config.image_size=16", "--config.num_classes=0"]
    assert cli.main(argv) == 2
    assert not workdir.exists()


def test_eval_only_labels_by_the_checkpoints_classes(tmp_path, tiny_config):
    """--eval_only on a split with fewer classes: the checkpoint's 3 classes, not val's 2."""
    _folder(tmp_path / "data", {"train": ["cat", "dog", "fox"], "val": ["dog", "fox"]})
    config = dict(
        dataset="folder", data_dir=str(tmp_path / "data"), train_split="train",
        eval_split="train", num_classes=0, batch_size=3, eval_batch_size=3, max_steps=1,
    )  # fmt: skip
    loop.train_and_evaluate(tiny_config(**config), tmp_path / "run")
    metrics = loop.evaluate(tiny_config(**config | {"eval_split": "val"}), tmp_path / "run")
    assert metrics["step"] == 1 and np.isfinite(metrics["loss"])
    assert json.loads((tmp_path / "run" / "eval_config.json").read_text())["eval_split"] == "val"


def test_the_cli_refusing_a_resume_leaves_config_json_as_it_was(stopped_run, capsys):
    from train import cli

    before = snapshot(stopped_run)
    argv = ["--config", "resnet20_digits", "--workdir", str(stopped_run)]
    argv += ["--config.train_split=train[:128]", "--config.batch_size=64"]
    assert cli.main(argv) == 2
    assert "trained with batch_size=32" in capsys.readouterr().err
    assert snapshot(stopped_run) == before


def test_an_undecodable_image_saves_first_and_can_be_skipped(tmp_path, tiny_config):
    """Streamed folder, 3 steps an epoch: a corrupt eval image stops the run at step 3 with
    that step saved; with skip_bad_images the same command resumes, trains past a corrupt
    training image too (the next one takes its place) and leaves the eval image out."""
    _folder(tmp_path / "data", {"train": ["cat", "dog"], "val": ["cat", "dog"]}, size=66)
    for name in ("cat", "dog"):  # 12 training images: 3 steps of 4 an epoch
        for i in range(3, 6):
            (tmp_path / "data" / "train" / name / f"{i}.png").write_bytes(
                (tmp_path / "data" / "train" / name / f"{i - 3}.png").read_bytes()
            )
    (tmp_path / "data" / "val" / "dog" / "1.png").write_bytes(b"\x89PNG broken")
    config = dict(
        dataset="folder", data_dir=str(tmp_path / "data"), train_split="train",
        eval_split="val", image_size=65, num_classes=0, num_workers=0, batch_size=4,
        eval_batch_size=4,
    )  # fmt: skip
    with pytest.raises(DataError, match=r"Cannot decode .*dog/1.png: cannot identify image file\. "
                       r".*stopped at step 3 \(saved in .*skip_bad_images=true"):  # fmt: skip
        loop.train_and_evaluate(tiny_config(**config), tmp_path / "run")
    assert Checkpoints(tmp_path / "run" / "checkpoints", read_only=True).all_steps() == [3]

    (tmp_path / "data" / "train" / "cat" / "4.png").write_bytes(b"\x89PNG broken too")
    with pytest.warns(UserWarning, match=r"Skipped \(\d file\(s\) skipped by this decoding"):
        result = loop.train_and_evaluate(
            tiny_config(skip_bad_images=True, **config), tmp_path / "run"
        )
    assert result["step"] == 6 and np.isfinite(result["eval"]["loss"])


def test_a_full_disk_is_one_line_not_orbaxs_tracebacks(tmp_path):
    """Checkpoint files cut short by the OS (a file size limit stands in for a full disk, the
    same failed write): exit 2 and one ``error:`` line saying what to do."""
    import subprocess
    import sys

    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))\n"
        "from train import cli\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    argv = ["--config", "resnet20_digits", "--workdir", str(tmp_path / "run")]
    argv += ["--config.train_split=train[:128]", "--config.num_epochs=1", "--config.image_size=16"]
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        f"error: cannot write a checkpoint in {tmp_path / 'run' / 'checkpoints'}: File too "
        f"large. Make room there (or lower keep_checkpoints), then run the same command again: "
        f"it resumes from the start."
    ]


def test_each_evaluation_is_a_line_of_the_log(tmp_path, tiny_config, capsys):
    loop.train_and_evaluate(tiny_config(max_steps=4), tmp_path)
    out = capsys.readouterr().out
    assert re.search(r"^eval step 4 \(epoch 1\) \| loss [\d.]+ \| accuracy [\d.]+$", out, re.M)


def test_predict_reads_a_training_runs_checkpoint(stopped_run, tmp_path, capsys):
    """--weights WORKDIR: the run's model, its class names and its evaluation transform."""
    from PIL import Image

    from resnet_flax.inference.predict import main
    from resnet_flax.io.transforms import EvalTransform

    image = tmp_path / "seven.png"
    pixels = np.random.default_rng(7).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    assert main(["--weights", str(stopped_run), "--kernels", "plain", str(image)]) == 0
    printed = capsys.readouterr()
    assert "resnet20 (" in printed.err and "step 1): resize 16, crop 16, bilinear" in printed.err
    rows = re.findall(r"^  \d\. (\S+)\s+([\d.]+)%$", printed.out, re.M)

    variables, _, _ = final_variables(stopped_run)
    x = EvalTransform(16, 16, "bilinear", (0.5,) * 3, (0.5,) * 3)([image])
    logits = create_model("resnet20", num_classes=10).apply(variables, x)
    probs = np.asarray(jax.nn.softmax(logits))[0]
    top = np.argsort(-probs)[:5]
    assert [name for name, _ in rows] == [str(i) for i in top]  # digits' class names
    np.testing.assert_allclose([float(p) for _, p in rows], 100 * probs[top], atol=0.006)
