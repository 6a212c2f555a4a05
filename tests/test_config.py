"""Configs load and validate; overrides are typed; the CLI reports bad input in one line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import resnet_flax
from train import cli
from train.config import (
    ConfigError,
    apply_overrides,
    base_config,
    documented_keys,
    list_configs,
    load_config,
    override,
    validate,
)

# Keys other tools read by name (the brief's list).
REQUIRED_KEYS = (
    "model", "dataset", "data_dir", "train_split", "eval_split", "image_size", "num_classes",
    "num_epochs", "batch_size", "learning_rate", "weight_decay", "label_smoothing",
    "warmup_epochs", "lr_schedule", "optimizer", "dtype", "seed", "pretrained", "freeze_backbone",
    "sync_batch_norm", "model_options", "eval_batch_size", "momentum", "nesterov", "lr_boundaries",
    "lr_decay_factor", "decay_norm_and_bias", "augment", "flip_tta", "checkpoint",
    "keep_checkpoints", "keep_best", "checkpoint_every_steps", "eval_every_epochs",
    "log_every_steps", "num_workers", "max_steps"
)  # fmt: skip
EXPECTED_CONFIGS = (
    "resnet18_cifar", "resnet20_cifar", "resnet56_cifar", "resnet110_cifar",
    "preact_resnet18_cifar", "lenet5_cifar", "resnet50_imagenet", "resnet18_imagenet",
    "resnet34_finetune", "resnet20_digits", "fake_data_benchmark", "resnet18_cifar_fast"
)  # fmt: skip
REPO = Path(__file__).resolve().parents[1]


def _error(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


def test_the_expected_configs_exist() -> None:
    assert set(EXPECTED_CONFIGS) <= set(list_configs())
    assert not any(name.startswith("_") for name in list_configs())


@pytest.mark.parametrize("name", list_configs())
def test_config_loads_validates_and_names_a_model(name: str) -> None:
    config = validate(load_config(name))
    assert config.name == name
    assert set(REQUIRED_KEYS) <= set(config.keys())
    assert config.model in resnet_flax.list_models()


def test_recipes_from_the_papers() -> None:
    he = load_config("resnet110_cifar")
    # 32k/48k/64k iterations at 50,000 / 128 = 390.6 steps per epoch.
    iterations = [e * 50_000 / 128 for e in (*he.lr_boundaries, he.num_epochs)]
    assert iterations == pytest.approx([32_000, 48_000, 64_000], rel=2e-3)
    assert (he.weight_decay, he.warmup_epochs, he.lr_schedule) == (1e-4, 1.0, "piecewise")
    goyal = load_config("resnet50_imagenet")
    assert goyal.learning_rate == pytest.approx(0.1 * goyal.batch_size / 256)
    assert tuple(goyal.lr_boundaries) == (30, 60, 80) and goyal.warmup_epochs == 5
    assert goyal.model_options.zero_init_residual and not goyal.decay_norm_and_bias
    assert load_config("resnet18_cifar").weight_decay == 5e-4


def test_overrides_are_typed_by_the_key() -> None:
    config = load_config("resnet18_cifar")
    apply_overrides(
        config,
        [
            ("learning_rate", "1"),  # int into a float key
            ("model_options.zero_init_residual", "true"),  # a new model option
            ("lr_boundaries", "[30,60]"),
            ("pretrained", "/some/where/resnet18.pth"),  # text as is for string keys
            ("train_split", "train[:45000]"),
            ("eval_split", "'test'"),  # a quoted literal is unquoted
            ("nesterov", "True"),
            ("batch_size", "64"),
        ],
    )
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.model_options.zero_init_residual is True
    assert tuple(config.lr_boundaries) == (30, 60)
    assert config.pretrained == "/some/where/resnet18.pth"
    assert (config.train_split, config.eval_split) == ("train[:45000]", "test")
    assert config.nesterov is True and config.batch_size == 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [(t, True) for t in ("true", "True", "yes", "on", "1")]
    + [(t, False) for t in ("false", "FALSE", "no", "off", "0")],
)
def test_boolean_spellings_for_config_keys_and_model_options(text: str, expected: bool) -> None:
    """ "no" and "off" were kept as strings for a model option, which are truthy: the option
    went on silently. Both kinds of boolean key now take the spellings, as bools."""
    config = load_config("resnet18_cifar")
    apply_overrides(config, [("augment", text), ("model_options.zero_init_residual", text)])
    validate(config)
    assert config.augment is expected
    assert config.model_options.zero_init_residual is expected


def test_a_model_option_that_is_not_a_boolean_spelling_is_refused() -> None:
    config = load_config("resnet18_cifar")
    apply_overrides(config, [("model_options.zero_init_residual", "nope")])
    with pytest.raises(ConfigError, match=r"model_options.zero_init_residual=nope.*boolean"):
        validate(config)


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("batch_size", "abc", "int"),
        ("batch_size", "0.5", "int"),
        ("batch_size", "true", "int"),
        ("augment", "maybe", "a boolean"),
        ("lr_boundaries", "30", "a list such as [30,60]"),
    ],
)
def test_badly_typed_override_names_key_value_and_type(key: str, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        override(load_config("resnet18_cifar"), key, text)
    message = _error(excinfo)
    assert f"--config.{key}={text}" in message and f"expected {expected}" in message


def test_unknown_keys_suggest_close_matches() -> None:
    config = load_config("resnet18_cifar")
    with pytest.raises(ConfigError, match="unknown config key 'learning_rte'.*'learning_rate'"):
        override(config, "learning_rte", "0.1")
    with pytest.raises(ConfigError, match="unknown config key 'model_optons'.*'model_options'"):
        override(config, "model_optons.zero_init_residual", "true")
    with pytest.raises(ConfigError, match="'learning_rate' is a float, not a group"):
        override(config, "learning_rate.x", "1")
    with pytest.raises(ConfigError, match="'model_options' is a group"):
        override(config, "model_options", "{}")


def test_unknown_config_lists_and_suggests() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config("resnet18_cifr")
    message = _error(excinfo)
    assert "unknown config 'resnet18_cifr'" in message
    assert "Did you mean 'resnet18_cifar'" in message
    assert all(name in message for name in list_configs())


def test_config_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.py"
    path.write_text(
        "from resnet_flax.configs import resnet20_cifar\n\n"
        "def get_config():\n"
        "    config = resnet20_cifar.get_config()\n"
        "    config.num_epochs = 3\n"
        "    config.lr_boundaries = (1, 2)\n"
        "    return config\n"
    )
    config = validate(load_config(str(path)))
    assert (config.name, config.model, config.num_epochs) == ("mine", "resnet20", 3)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.py"))


def test_config_file_with_a_typo_or_wrong_type(tmp_path: Path) -> None:
    typo = tmp_path / "typo.py"
    typo.write_text(
        "from resnet_flax.configs import _base\n\n"
        "def get_config():\n"
        "    config = _base.get_config()\n"
        "    config.lerning_rate = 0.1\n"
        "    return config\n"
    )
    with pytest.raises(ConfigError, match="unknown config key 'lerning_rate'.*'learning_rate'"):
        validate(load_config(str(typo)))
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "from resnet_flax.configs import _base\n\n"
        "def get_config():\n"
        "    config = _base.get_config()\n"
        "    config.batch_size = '128'\n"
        "    return config\n"
    )
    with pytest.raises(ConfigError, match="wrong.py.*'batch_size'"):
        load_config(str(wrong))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([("optimizer", "adam")], "optimizer='adam' is not valid.*'adamw'.*sgd, adamw"),
        ([("dtype", "float16")], "dtype='float16' is not valid.*float32, bfloat16"),
        ([("dataset", "cifar11")], "dataset='cifar11' is not valid.*'cifar10'"),
        ([("model", "resnet19")], "model='resnet19' is not valid.*'resnet18'"),
        ([("batch_size", "0")], "batch_size=0: must be >= 1"),
        ([("label_smoothing", "1.5")], r"label_smoothing=1.5: must be in \[0.0, 1.0\)"),
        ([("lr_schedule", "piecewise")], "piecewise' needs lr_boundaries"),
        ([("lr_boundaries", "[150,100]")], "must be ascending epochs"),
        ([("lr_boundaries", "[100,250]")], "between 0 and num_epochs=200"),
        ([("warmup_epochs", "200")], "warmup_epochs=200.0: must be less than num_epochs"),
        ([("optimizer", "adamw"), ("nesterov", "true")], "nesterov=True needs optimizer='sgd'"),
        ([("freeze_backbone", "true")], "freeze_backbone=True.*--config.pretrained="),
        ([("pretrained", "/no/such/file.pth")], "pretrained='/no/such/file.pth': no such file"),
        ([("pretrained", "resnet34.tv_in1k")], r"are resnet34's weights.*--config.model=resnet34"),
        (
            [("pretrained", "resnet18.tv_in1j")],
            r"nor a weights tag \(none for resnet18_cifar\)\. Did you mean 'resnet18.tv_in1k'",
        ),
        ([("model_options.num_classes", "5")], "model_options.num_classes: set the top-level"),
        ([("model_options.dropout", "0.1")], "not an option of resnet18_cifar"),
    ],
)
def test_validation_errors(overrides: list[tuple[str, str]], message: str) -> None:
    config = load_config("resnet18_cifar")
    apply_overrides(config, overrides)
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_cli_hands_the_resolved_config_to_the_run(tmp_path: Path, monkeypatch, capsys) -> None:
    """The run writes config.json itself, once nothing can refuse it (tests/test_loop.py)."""
    runs: list[tuple] = []
    monkeypatch.setattr(cli, "_run", lambda config, workdir, eval_only: runs.append(
        (config, workdir, eval_only)) or {"accuracy": 0.5})  # fmt: skip
    workdir = tmp_path / "run"
    argv = ["--config", "resnet20_digits", "--workdir", str(workdir)]
    assert cli.main([*argv, "--config.learning_rate=0.05", "--config.seed", "3"]) == 0
    config, where, eval_only = runs[0]
    assert (config.name, config.learning_rate, config.seed) == ("resnet20_digits", 0.05, 3)
    assert str(where) == str(workdir) and not eval_only
    with pytest.raises(AttributeError):
        config.new_key = 1  # the config handed to the loop is locked
    assert '"accuracy": 0.5' in capsys.readouterr().out
    assert not workdir.exists()  # nothing written by the CLI itself

    assert cli.main([*argv, "--eval_only", "--config.flip_tta=true"]) == 0
    assert runs[1][0].flip_tta is True and runs[1][2] is True


@pytest.mark.parametrize("stopped_by, code", [("SIGTERM", 143), ("SIGINT", 130), (None, 0)])
def test_cli_exit_code_tells_a_preempted_run(tmp_path: Path, monkeypatch, capsys, stopped_by, code):
    """Stopped by a signal (after saving): 128 + its number; stopped by max_steps: 0."""
    result = {"step": 2, "interrupted": True, "signal": stopped_by}
    monkeypatch.setattr(cli, "_run", lambda *args: result)
    assert cli.main(["--config", "lenet5_cifar", "--workdir", str(tmp_path)]) == code
    if stopped_by:
        assert f"stopped by {stopped_by} at step 2 (saved)" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["learning_rate", "warmup_epochs", "weight_decay", "momentum"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])  # JSON spellings
def test_non_finite_floats_are_refused_by_name(key: str, value: str) -> None:
    """NaN compares false with every bound, so it used to pass the range checks."""
    config = load_config("resnet18_cifar")
    apply_overrides(config, [(key, value)])
    with pytest.raises(ConfigError, match=rf"^{key}=(nan|inf|-inf): must be a finite number"):
        validate(config)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config.dataset=folder"], r"dataset='folder' needs a data_dir.*SPLIT/CLASS/IMAGE"),
        (["--config.dataset=folder", "--config.data_dir=/no/such"], r"/no/such does not exist"),
        (["--config.batch_size=32"], r"batch_size=32 must be a positive multiple of .* \(3\)"),
    ],
)
def test_data_and_device_errors_come_before_anything_is_written(
    tmp_path: Path, monkeypatch, capsys, argv, message
) -> None:
    import jax

    monkeypatch.setattr(jax, "device_count", lambda *a: 3)  # as if on 3 devices
    monkeypatch.setattr(cli, "_run", lambda *args: pytest.fail("ran"))
    workdir = tmp_path / "run"
    code = cli.main(["--config", "resnet20_digits", "--workdir", str(workdir), *argv])
    assert code == 2
    out = capsys.readouterr()
    assert re.search(message, out.err) and "config resnet20_digits" not in out.out
    assert not workdir.exists()  # no config.json


def test_cli_default_workdir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    runs: list = []
    monkeypatch.setattr(cli, "_run", lambda config, workdir, eval_only: runs.append(workdir) or {})
    assert cli.main(["--config", "lenet5_cifar"]) == 0
    assert str(runs[0]) == "runs/lenet5_cifar"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "resnet18_cifr"], "unknown config 'resnet18_cifr'"),
        (["--config", "resnet18_cifar", "--config.learning_rte=0.1"], "'learning_rate'"),
        (["--config", "resnet18_cifar", "--config.batch_size=big"], "expected int"),
        (["--config", "resnet18_cifar", "--config.optimizer=adam"], "sgd, adamw"),
        (["--config", "resnet18_cifar", "--config.seed"], "--config.seed needs a value"),
    ],
)
def test_cli_user_errors_exit_2_without_traceback(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "train", *args, "--workdir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_cli_help_lists_configs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "train", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0
    assert "--config.KEY=VALUE" in result.stdout and "resnet18_cifar" in result.stdout


def test_imagenet_configs_take_batch_norm_statistics_per_device() -> None:
    """Goyal et al.'s recipe (the docstring of resnet50_imagenet, which resnet18's follows)."""
    for name in ("resnet50_imagenet", "resnet18_imagenet"):
        assert load_config(name).sync_batch_norm is False, name


def test_num_workers_is_a_count_or_minus_one_for_automatic(tiny_config) -> None:
    assert tiny_config(num_workers=-1).num_workers == -1
    with pytest.raises(ConfigError, match="num_workers=-2: must be >= -1"):
        tiny_config(num_workers=-2)


RUN_AS_PYTHON_M_TRAIN = """
import os, runpy, sys
ours = tuple(os.path.join(os.getcwd(), part, "") for part in ("resnet_flax", "train", "configs"))
sys.argv = ["train", *sys.argv[1:]]
try:
    runpy.run_module("train", run_name="__main__", alter_sys=True)  # what `python -m train` does
except SystemExit as stop:
    code = stop.code
by_file = {}
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if path and path.startswith(ours):  # the project's own files
        by_file.setdefault(path, []).append(name)
twice = {path: names for path, names in by_file.items() if len(names) > 1}
names = sorted(n for n in sys.modules if n.split(".")[0] in ("train", "resnet_flax"))
print("EXIT", code, "TWICE", twice, "OURS", names)
"""


def test_the_trainer_runs_from_the_checkout_with_each_module_under_one_name(tmp_path) -> None:
    """`python -m train` in a checkout: the trainer is the top-level ``train`` package, the
    configurations ``resnet_flax.configs`` (the editable install maps configs/ there); none of
    the project's files is imported under two names (``train.loop`` and
    ``resnet_flax.train.loop``, say)."""
    config = tmp_path / "mine.py"
    config.write_text(
        "from resnet_flax.configs import _base\n\n\n"  # a user's own config: the one import
        "def get_config():\n"
        "    config = _base.get_config()\n"
        "    config.update(model='resnet20', dataset='digits', train_split='train[:64]',\n"
        "                  eval_split='test[:32]', image_size=16, num_epochs=1, batch_size=32,\n"
        "                  eval_batch_size=32, log_every_steps=1)\n"
        "    return config\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", RUN_AS_PYTHON_M_TRAIN, "--config", str(config),
         "--config.max_steps=1", "--workdir", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("EXIT"))
    assert line.startswith("EXIT None TWICE {}") or line.startswith("EXIT 0 TWICE {}"), line
    assert "'train.loop'" in line and "'resnet_flax.configs._base'" in line
    assert "resnet_flax.train" not in line and "'configs" not in line


def test_cli_names_itself_as_started_and_lists_every_key(monkeypatch, capsys) -> None:
    from train import plot

    monkeypatch.setattr(sys, "argv", ["/venv/bin/resnet-flax-train"])
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: resnet-flax-train ")
    for key in base_config().to_dict():  # every key, with its default
        assert re.search(rf"^  {key}=", out, re.M), key
    assert "  skip_bad_images=False  (Streamed data sets:" in out
    monkeypatch.setattr(sys, "argv", ["/venv/bin/resnet-flax-plot"])
    with pytest.raises(SystemExit):
        plot.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: resnet-flax-plot ")
    monkeypatch.setattr(sys, "argv", ["/x/train/__main__.py"])
    assert cli.program("train", "resnet-flax-train") == "python -m train"


def test_cli_end_names_the_workdir_and_the_plot_command(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "_run", lambda *args: {"step": 8})
    monkeypatch.setattr(sys, "argv", ["resnet-flax-train"])
    assert cli.main(["--config", "lenet5_cifar", "--workdir", str(tmp_path / "run")]) == 0
    assert f"Curves: resnet-flax-plot {tmp_path / 'run'}" in capsys.readouterr().err


def test_an_unreachable_object_store_fails_fast(tmp_path, monkeypatch, capsys) -> None:
    """gs:// with its service unreachable: a clear error in seconds, not minutes of retries."""
    import time

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setattr(cli, "_run", lambda *args: pytest.fail("ran"))
    start = time.perf_counter()
    code = cli.main(["--config", "resnet20_digits", "--workdir", "gs://bucket/run"])
    assert code == 2 and time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert "gs://bucket/run: cannot reach http://127.0.0.1:9" in err and "STORAGE_EMULATOR" in err


def test_every_config_key_has_a_meaning_in_the_defaults_source():
    """``_base.py`` documents each key where it is set; ``--help`` and the docs read it there."""
    keys = documented_keys()
    assert sorted(key for key, _, _ in keys) == sorted(base_config().keys())
    assert [key for key, _, meaning in keys if not meaning] == []
    assert dict((k, m) for k, _, m in keys)["batch_size"].startswith("global")
