"""Where a figure comes from: the machine, the date and the command, recorded beside it.

Every figure the documentation shows is generated from a JSON file that one of the project's
commands wrote (``python -m bench``, ``python -m bench.runs``, the parity report of
``tests/test_parity.py``); each file carries this record, and the docs print it under the figure.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name, as the kernel reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(command: str | None = None) -> dict[str, Any]:
    """The machine, library versions, today's date (UTC) and ``command`` (default: this
    process's own command line, as ``python -m MODULE ARGS`` where it ran as a module)."""
    import flax
    import jax
    import PIL

    from resnet_flax.cpu import onednn
    from resnet_flax.models.layers import compiler_options

    if command is None:
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        head = ["-m", spec.name.removesuffix(".__main__")] if spec else [sys.argv[0]]
        command = " ".join(["python", *head, *sys.argv[1:]])
    info = {
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [d.device_kind for d in jax.local_devices()],
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "pillow": PIL.__version__,
        "compiler_options": compiler_options("auto"),  # ours: the trainer's kernels
        "onednn": onednn.version(),  # None: the CPU convolutions are XLA's own
        "command": command,
    }
    try:
        import torch
        import torchvision

        info |= {"torch": torch.__version__, "torchvision": torchvision.__version__}
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def describe(info: dict[str, Any]) -> str:
    """One line for the docs: 'Measured DATE on CPU, N cores (backend); jax X. Command: `...`'."""
    devices = ", ".join(sorted(set(info.get("jax_devices", [])))) or "?"
    where = f"{info.get('cpu', '?')}, {info.get('cores', '?')} cores, JAX on {devices}"
    versions = ", ".join(
        f"{k} {info[k]}" for k in ("jax", "flax", "torch", "onednn") if info.get(k)
    )
    date = info.get("date", "date not recorded")
    return f"Measured {date} on {where}; {versions}. Command: `{info.get('command', '?')}`."
