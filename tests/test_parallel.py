"""Multi-host start-up, global batches, and two processes training as one.

The two-process test launches this file twice with ``jax.distributed`` on localhost (one CPU
device each, gloo collectives) and once as a single process with 2 simulated devices: the
same 2-device mesh, so the runs must agree.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from resnet_flax.cpu import onednn
from train import distributed, feed
from train.data import ArrayDataset, epoch_permutation

ROOT = Path(__file__).resolve().parents[1]


def test_initialize_distributed_reads_the_environment(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: calls.append(args))
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                 "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize_distributed() is False and calls == []
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.9:99")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed.initialize_distributed() is True
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    monkeypatch.setenv("SLURM_NTASKS", "8")  # JAX's own cluster detection fills the rest
    assert distributed.initialize_distributed() is True
    assert calls == [("10.0.0.9:99", 2, 1), (None, 2, 1)]


def test_distributed_true_and_tpu_hosts_let_jax_find_the_cluster(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: calls.append(args))
    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_on_tpu", lambda: False)
    assert distributed.initialize_distributed(cluster=True) is True and calls == [()]
    monkeypatch.setattr(distributed, "_on_tpu", lambda: True)  # a TPU host: tried unasked
    assert distributed.initialize_distributed() is True and calls == [(), ()]

    def no_cluster(*args):
        raise ValueError("coordinator_address should be defined")

    monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
    assert distributed.initialize_distributed() is False  # a TPU host on its own
    with pytest.raises(RuntimeError, match="distributed=true, but JAX found no cluster"):
        distributed.initialize_distributed(cluster=True)


def test_batch_size_must_split_over_devices(monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    distributed.check_batch_size(64)
    with pytest.raises(
        ValueError, match=r"batch_size=12 must be a positive multiple .* \(8\); try 8"
    ):
        distributed.check_batch_size(12)


def test_process_slice_is_this_process_part(monkeypatch):
    rows = np.arange(12)
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    np.testing.assert_array_equal(distributed.process_slice(rows), [4, 5, 6, 7])


def dataset(n: int) -> ArrayDataset:
    images = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(3, -1)
    return ArrayDataset(images, np.arange(n) % 3, 3, ["a", "b", "c"])


def test_array_input_batches_follow_the_epoch_permutation():
    mesh = distributed.make_mesh()
    source = feed.ArrayInput(mesh, dataset(10), batch_size=4, seed=3)
    assert source.steps_per_epoch == 2  # the last partial batch of an epoch is dropped
    batches = source.train_batches()
    seen = [np.asarray(next(batches)["index"]) for _ in range(5)]
    for step, index in enumerate(seen):
        epoch, i = divmod(step, 2)
        np.testing.assert_array_equal(index, epoch_permutation(10, 3, epoch)[i * 4 : i * 4 + 4])
    resumed = source.train_batches(start_step=3)  # mid-epoch: the same batches again
    for index in seen[3:]:
        np.testing.assert_array_equal(np.asarray(next(resumed)["index"]), index)


def test_array_input_eval_sees_every_example_once():
    source = feed.ArrayInput(distributed.make_mesh(), dataset(10), batch_size=4)
    batches = [jax.device_get(b) for b in source.eval_batches()]
    assert len(batches) == 3
    real = np.concatenate([b["index"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(real, np.arange(10))
    assert batches[-1]["mask"].tolist() == [True, True, False, False]


def worker(mode: str, workdir: str, config_path: str) -> None:
    """A subprocess: one of the two distributed processes, or the 2-device reference.

    ``preempt``: process 1 sends itself SIGTERM after step 2. ``corrupt``: process 1 cannot
    read the latest checkpoint (its view of it is broken), process 0 can.
    """
    import orbax.checkpoint as ocp

    from train import loop
    from train.checkpoint import load_variables

    config = ConfigDict(json.loads(Path(config_path).read_text()))
    if mode == "preempt":
        original_stop = loop._StopRequest.stop

        def stop(self):
            if jax.process_index() == 1 and self._votes._pending is not None and not calls:
                calls.append(os.kill(os.getpid(), signal.SIGTERM))  # during the second step
            return original_stop(self)

        calls = []

        loop._StopRequest.stop = stop
    if mode == "corrupt":
        original_metadata = ocp.CheckpointManager.item_metadata
        steps = (Path(workdir) / "checkpoints").iterdir()
        broken = max(int(p.name) for p in steps if p.name.isdigit())

        def item_metadata(self, step):
            if jax.process_index() == 1 and step == broken:
                raise FileNotFoundError(f"injected: step {step} unreadable on process 1")
            return original_metadata(self, step)

        ocp.CheckpointManager.item_metadata = item_metadata
    result = loop.train_and_evaluate(config, workdir)  # initialises jax.distributed
    summary = {key: result[key] for key in ("step", "interrupted", "signal")}
    print("RESULT", json.dumps(summary))
    assert jax.device_count() == 2
    assert jax.process_count() == (1 if mode == "reference" else 2)
    if mode == "preempt":
        return
    assert result["step"] == config.max_steps
    variables, _, _ = load_variables(workdir, distributed.make_mesh())  # a collective
    if jax.process_index() == 0:
        leaves = jax.tree.leaves_with_path(jax.device_get(variables))
        np.savez(Path(workdir) / f"{mode}.npz", **{jax.tree_util.keystr(k): v for k, v in leaves})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(mode: str, workdir: Path, config: Path, extra_env: dict[str, str]) -> subprocess.Popen:
    # oneDNN's kernel gradients sum in an order that depends on its thread count; the same
    # count everywhere keeps the comparison exact.
    env = os.environ | {onednn.THREADS_ENV: "1"} | extra_env
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, __file__, mode, str(workdir), str(config)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def assert_same_variables(two_processes: Path, reference: Path) -> None:
    """The variables a two-process run saved equal the 2-device reference's, to rtol 1e-6."""
    with np.load(two_processes) as two, np.load(reference) as one:
        assert sorted(two.files) == sorted(one.files) and len(one.files) > 50
        for key in one.files:
            np.testing.assert_allclose(two[key], one[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_two_processes_train_like_one(tmp_path, tiny_config, config_file):
    config = config_file(tiny_config(sync_batch_norm=True, max_steps=4))
    address = f"127.0.0.1:{free_port()}"
    processes = [
        launch(
            "process",
            tmp_path / "two",
            config,
            {
                "JAX_COORDINATOR_ADDRESS": address,
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(i),
            },
        )  # fmt: skip
        for i in range(2)
    ]
    reference = launch(
        "reference",
        tmp_path / "one",
        config,
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    for process in [*processes, reference]:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    assert_same_variables(tmp_path / "two" / "process.npz", tmp_path / "one" / "reference.npz")
    # process 0 alone writes metrics
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "one" / "metrics.jsonl").read_text().splitlines())


def test_prefetch_keeps_two_batches_in_flight_and_closes_its_source():
    pulled, closed = [], []

    def source():
        try:
            for i in range(5):
                pulled.append(i)
                yield i
        finally:
            closed.append(True)

    batches = feed.Prefetched(source())
    assert pulled == [0, 1]  # two batches on their way before the first step asks
    assert next(batches) == 0 and pulled == [0, 1, 2]  # the step takes one, one more starts
    assert next(batches) == 1 and pulled == [0, 1, 2, 3]
    batches.close()
    assert closed == [True]
    assert list(feed.Prefetched(iter(range(3)))) == [0, 1, 2]  # nothing lost at the end
    unstarted = feed.Prefetched(source())
    unstarted.close()  # closed before any step: the source is closed all the same
    assert closed == [True, True]


def two_processes(mode: str, workdir: Path, config: Path) -> list[str]:
    address = f"127.0.0.1:{free_port()}"
    processes = [
        launch(mode, workdir, config, {"JAX_COORDINATOR_ADDRESS": address,
                                       "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
        for i in range(2)
    ]  # fmt: skip
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for i, process in enumerate(processes):
        assert process.returncode == 0, f"process {i}: {outputs[i][-3000:]}"
    return outputs


def result_of(output: str) -> dict:
    return json.loads(output.split("RESULT ", 1)[1].splitlines()[0])


def test_preemption_and_a_checkpoint_one_process_cannot_read_are_agreed(
    tmp_path, tiny_config, config_file
):
    """SIGTERM to process 1 after step 2: both processes vote on it then, stop after step 3
    and save it. The resumed run finds the latest checkpoint unreadable on process 1 only:
    both fall back to the same earlier step, and the run ends where an uninterrupted one
    does, exactly."""
    config = config_file(tiny_config(sync_batch_norm=True, max_steps=6, checkpoint_every_steps=2))
    first = [result_of(out) for out in two_processes("preempt", tmp_path / "two", config)]
    assert first[0] == first[1] and first[0]["interrupted"], first
    assert first[0]["signal"] == "SIGTERM"  # the process that got none stops as preempted too
    stopped = first[0]["step"]
    assert stopped == 3  # the vote cast after step 2 is read after step 3
    saved = sorted(int(p.name) for p in (tmp_path / "two" / "checkpoints").iterdir()
                   if p.name.isdigit())  # fmt: skip
    assert saved[-1] == stopped and len(saved) >= 2
    outputs = two_processes("corrupt", tmp_path / "two", config)
    for output in outputs:
        assert f"resuming from step {saved[-2]} instead" in output, output[-2000:]
        assert result_of(output)["step"] == 6
    reference = launch(
        "reference", tmp_path / "one", config,
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )  # fmt: skip
    output, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, output[-3000:]
    assert_same_variables(tmp_path / "two" / "corrupt.npz", tmp_path / "one" / "reference.npz")


if __name__ == "__main__":
    worker(*sys.argv[1:4])
