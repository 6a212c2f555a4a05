"""Checkpoints: latest-N plus best-N retention, corrupt-step fallback, 8 devices -> fewer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from train.checkpoint import (
    CheckpointError,
    Checkpoints,
    abstract_tree,
    load_variables,
    resolve,
)
from train.distributed import make_mesh


def small_tree(value: float) -> dict:
    return {
        "params": {"w": jnp.full((3, 2), value), "b": jnp.arange(2.0) + value},
        "count": jnp.asarray(int(value), jnp.int32),
    }


def save_steps(directory: Path, accuracies: dict[int, float | None], **options) -> Checkpoints:
    checkpoints = Checkpoints(directory, **options)
    for step, accuracy in accuracies.items():
        checkpoints.save(step, small_tree(step), {"step": step}, accuracy)
    checkpoints.wait()
    return checkpoints


def test_keeps_the_latest_and_the_best(tmp_path):
    """The best (step 3) survives; the newest two survive even though they score worse."""
    accuracies = {1: 0.5, 2: None, 3: 0.9, 4: 0.2, 5: None, 6: 0.3}
    checkpoints = save_steps(tmp_path, accuracies, keep=2, keep_best=1)
    assert checkpoints.all_steps() == [3, 5, 6]
    assert checkpoints.save(6, small_tree(6), {}) is False  # already there
    checkpoints.close()


def test_restore_round_trip_and_meta(tmp_path):
    checkpoints = save_steps(tmp_path, {1: None, 2: None})
    target = abstract_tree(small_tree(0), make_mesh())
    tree, meta, step = checkpoints.restore(target)
    assert step == 2 and meta == {"step": 2}
    np.testing.assert_array_equal(tree["params"]["w"], np.full((3, 2), 2.0))
    tree, _, step = checkpoints.restore(target, step=1)
    assert step == 1 and int(tree["count"]) == 1
    with pytest.raises(CheckpointError, match="no checkpoint at step 7"):
        checkpoints.restore(target, step=7)
    checkpoints.close()


def corrupt(step_dir: Path) -> None:
    """Truncate every data file of a step's state: what a crash mid-write leaves."""
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            with path.open("r+b") as file:
                file.truncate(path.stat().st_size // 2)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_latest_falls_back_to_the_previous(tmp_path):
    checkpoints = save_steps(tmp_path, {1: None, 2: None, 3: None}, keep=3)
    corrupt(tmp_path / "3")
    target = abstract_tree(small_tree(0), make_mesh())
    with pytest.warns(UserWarning, match=rf"checkpoint {tmp_path / '3'} is unreadable"):
        tree, _, step = checkpoints.restore(target, quarantine=True)
    assert step == 2 and float(tree["params"]["w"][0, 0]) == 2.0
    # set aside, so that training can save step 3 again
    assert (tmp_path / "3.corrupt").is_dir() and checkpoints.all_steps() == [1, 2]
    assert checkpoints.save(3, small_tree(3), {})
    checkpoints.close()


def _data_files(step_dir: Path) -> list[Path]:
    return sorted(
        p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"
    )


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["deleted", "bit flip"])
def test_a_deleted_or_changed_data_file_falls_back(tmp_path, damage):
    """A deleted data file makes orbax raise a bare Exception; a flipped bit restores silently
    without the checksums. Either way the step is set aside and the previous one restores."""
    checkpoints = save_steps(tmp_path, {1: None, 2: None}, keep=3)
    recorded = json.loads((tmp_path / "2" / "checksums.json").read_text())["sha256"]
    assert set(recorded) >= {
        str(p.relative_to(tmp_path / "2")) for p in _data_files(tmp_path / "2")
    }
    victim = _data_files(tmp_path / "2")[0]
    if damage == "deleted":
        victim.unlink()
        expected = "is missing"
    else:
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
        expected = "differs from the checksum recorded when it was saved"
    target = abstract_tree(small_tree(0), make_mesh())
    with pytest.warns(UserWarning, match=rf"checkpoint {tmp_path / '2'} is unreadable.*{expected}"):
        tree, _, step = checkpoints.restore(target, quarantine=True)
    assert step == 1 and float(tree["params"]["w"][0, 0]) == 1.0
    assert (tmp_path / "2.corrupt").is_dir() and checkpoints.all_steps() == [1]
    checkpoints.close()


def test_an_unwritable_checkpoint_directory_fails_at_once(tmp_path):
    """Refused when the manager is made, before training (orbax used to stall 300 s in its
    background save, then print nine tracebacks)."""
    (tmp_path / "checkpoints").write_text("")  # a file where the directory should be
    with pytest.raises(CheckpointError, match=r"cannot write checkpoints to .*choose another"):
        Checkpoints(tmp_path / "checkpoints")
    read_only = Path("/sys/fs/resnet-flax-checkpoints")  # sysfs: not writable, even by root
    try:
        read_only.mkdir()
    except OSError:
        pass
    else:
        read_only.rmdir()
        pytest.skip("/sys/fs is writable here")
    with pytest.raises(CheckpointError, match=rf"cannot write checkpoints to {read_only} \("):
        Checkpoints(read_only)


def test_any_restore_failure_falls_back(tmp_path, monkeypatch):
    """Whatever orbax raises while restoring a step (here a bare Exception) means unreadable."""
    checkpoints = save_steps(tmp_path, {1: None, 2: None}, keep=3)
    restore = checkpoints._manager.restore

    def failing(step, *args, **kwargs):
        if step == 2:
            raise Exception("Encountered error while reading array index 0")  # noqa: TRY002
        return restore(step, *args, **kwargs)

    monkeypatch.setattr(checkpoints._manager, "restore", failing)
    with pytest.warns(UserWarning, match="reading array index 0.*resuming from step 1"):
        _, _, step = checkpoints.restore(abstract_tree(small_tree(0), make_mesh()))
    assert step == 1
    checkpoints.close()


# After a failed read, orbax's tensorstore callbacks may hit a closed asyncio loop: noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_no_readable_checkpoint_names_the_file(tmp_path):
    checkpoints = save_steps(tmp_path, {1: None, 2: None})
    corrupt(tmp_path / "1")
    corrupt(tmp_path / "2")
    target = abstract_tree(small_tree(0), make_mesh())
    with pytest.raises(CheckpointError) as error:
        checkpoints.restore(target)
    message = str(error.value)
    assert f"{tmp_path / '2'} fails" in message and str(tmp_path / "2" / "state" / "d") in message
    checkpoints.close()


def test_resolve_accepts_workdir_directory_and_step(tmp_path):
    save_steps(tmp_path / "checkpoints", {5: None}).close()
    assert resolve(tmp_path) == (tmp_path / "checkpoints", None)
    assert resolve(tmp_path / "checkpoints") == (tmp_path / "checkpoints", None)
    assert resolve(tmp_path / "checkpoints" / "5") == (tmp_path / "checkpoints", 5)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve(tmp_path / "missing")


def eight_device_run(workdir: str, config_path: str) -> None:
    """The subprocess: 2 steps of the tiny loop config on 8 devices, params dumped."""
    from train.loop import train_and_evaluate

    assert jax.device_count() == 8
    config = ConfigDict(json.loads(Path(config_path).read_text()))
    train_and_evaluate(config, workdir)
    variables, _, step = load_variables(workdir, make_mesh())
    assert step == 2
    leaves = jax.tree.leaves_with_path(jax.device_get(variables))
    np.savez(Path(workdir) / "eight.npz", **{jax.tree_util.keystr(k): v for k, v in leaves})


def test_eight_device_checkpoint_resumes_on_one(tmp_path, tiny_config, config_file, on_devices):
    on_devices(__file__, tmp_path, config_file(tiny_config(max_steps=2)))
    assert jax.device_count() < 8
    variables, _, step = load_variables(tmp_path, make_mesh())
    assert step == 2
    with np.load(tmp_path / "eight.npz") as saved:
        leaves = jax.tree.leaves_with_path(jax.device_get(variables))
        assert len(saved.files) == len(leaves)
        for path, value in leaves:
            np.testing.assert_array_equal(value, saved[jax.tree_util.keystr(path)])
    # and the run goes on from there on one device
    from train.loop import train_and_evaluate

    result = train_and_evaluate(tiny_config(max_steps=4), tmp_path)
    assert result["step"] == 4
    assert result["train"] is not None and np.isfinite(result["train"]["loss"])


if __name__ == "__main__":
    eight_device_run(sys.argv[1], sys.argv[2])
