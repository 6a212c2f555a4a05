"""The training program: ``python -m resnet_flax.train`` (``resnet-flax-train``; ``python -m
train`` in a checkout). It needs the ``[train]`` extra."""

import importlib.util

_NEEDED = ("optax", "orbax.checkpoint", "ml_collections", "grain", "cv2", "tensorboardX")
_missing = [name for name in _NEEDED if importlib.util.find_spec(name.split(".")[0]) is None]
if _missing:
    raise ModuleNotFoundError(
        f"the trainer needs {', '.join(_missing)}: install the [train] extra, "
        "pip install 'resnet-flax[train]'",
        name=_missing[0],
    )
