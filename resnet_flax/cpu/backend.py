"""The XLA:CPU compiler settings the ``impl="cpu"`` kernels are fast with.

On the CPU, XLA (jaxlib 0.10) hands convolutions and reductions, among others, to YNNPACK
library fusions by default. For these networks its convolutions are much slower than XLA's
own, but its reductions are the fast way to take BatchNorm's channel sums: one read of the
activations with the elementwise work fused in. So programs built with the CPU kernels keep
YNNPACK for reductions only; the kernels carry these options
(``resnet_flax.models.layers.compiler_options(impl)``), and programs built with
``impl="plain"`` compile with XLA's defaults.
"""

from __future__ import annotations

from typing import Any

# YNNPACK library fusions for reductions only.
CPU_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
}
