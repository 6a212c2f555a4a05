"""The training program: ``python -m train`` in a checkout, ``resnet-flax-train`` (or ``python -m
resnet_flax.train``) installed. It needs the ``[train]`` extra.

The checkout keeps it at the top level (``train/``) and the wheel installs it as
``resnet_flax.train``; its modules import one another relatively, so each is imported under
one name whichever way it runs.
"""

import importlib.util

_NEEDED = ("optax", "orbax.checkpoint", "ml_collections", "grain", "cv2", "tensorboardX")
_missing = [name for name in _NEEDED if importlib.util.find_spec(name.split(".")[0]) is None]
if _missing:
    raise ModuleNotFoundError(
        f"the trainer needs {', '.join(_missing)}: install the [train] extra, "
        "pip install 'resnet-flax[train]'",
        name=_missing[0],
    )
