"""A training run's checkpoints, read for inference: the weights of its latest (or a named)
step and the record the trainer keeps beside them (the model and its options, the classes,
the evaluation transform). The trainer (``resnet_flax.train.checkpoint``) writes them; this
reads them without it. Needs orbax-checkpoint (``pip install 'resnet-flax[train]'``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from resnet_flax.io import paths
from resnet_flax.io.transforms import EvalTransform

STATE, META = "state", "meta"  # the two items of a step directory
CHECKPOINTS = "checkpoints"  # in a run's workdir


class RunError(ValueError):
    """A path that holds no training run's checkpoint this can read."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One step of a training run: enough to build the model and classify with it."""

    model: str
    options: dict[str, Any]  # create_model's, num_classes included
    class_names: list[str]
    transform: EvalTransform
    variables: dict[str, Any]  # params and batch_stats, host arrays
    step: int


def locate(path: paths.PathLike) -> tuple[paths.Path, int | None]:
    """``(checkpoint directory, step or None for the latest)`` from a run's workdir (with
    ``checkpoints/``), a checkpoint directory, or one step directory inside it."""
    path = paths.as_path(path)
    if not path.is_dir():
        raise RunError(f"checkpoint {path} does not exist (or is not a directory).")
    if (path / CHECKPOINTS).is_dir():
        return path / CHECKPOINTS, None
    if path.name.isdigit() and (path / STATE).is_dir():
        return path.parent, int(path.name)
    return path, None


def is_run(path: paths.PathLike) -> bool:
    """Whether ``path`` is a directory :func:`read_run` can try."""
    try:
        directory, step = locate(path)
    except RunError:
        return False
    return step is not None or any(p.name.isdigit() for p in directory.iterdir())


def read_run(path: paths.PathLike) -> Run:
    """The latest step of the run at ``path`` (see :func:`locate`), or the step it names."""
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise RunError(
            f"{path} holds a training run's checkpoints: reading them needs orbax-checkpoint "
            f"(pip install 'resnet-flax[train]')."
        ) from None
    directory, step = locate(path)
    handlers = {STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()}
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    with ocp.CheckpointManager(
        paths.absolute(directory), options=options, item_handlers=handlers
    ) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise RunError(f"no checkpoint in {directory}: train first.")
        items = {STATE: ocp.args.StandardRestore(), META: ocp.args.JsonRestore()}
        args = ocp.args.Composite(**items)
        try:
            restored = manager.restore(step, args=args)
        except Exception as error:  # orbax and TensorStore raise many kinds
            raise RunError(f"cannot read step {step} of {directory}: {error}") from None
    meta, state = dict(restored[META]), restored[STATE]["train_state"]
    if "transform" not in meta:
        raise RunError(
            f"{directory / str(step)} was saved before checkpoints recorded the model and its "
            f"evaluation transform: evaluate it with the trainer (--eval_only)."
        )
    transform = meta["transform"]
    return Run(
        model=meta["model"],
        options={**meta["model_options"], "num_classes": meta["num_classes"]},
        class_names=list(meta["class_names"]),
        transform=EvalTransform(
            resize_size=transform["resize_size"],
            crop_size=transform["crop_size"],
            interpolation=transform["interpolation"],
            mean=tuple(transform["mean"]),
            std=tuple(transform["std"]),
        ),
        variables={"params": state["params"], "batch_stats": state["batch_stats"]},
        step=step,
    )
