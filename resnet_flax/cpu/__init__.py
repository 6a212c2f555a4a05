"""The XLA:CPU backend: compiler settings, oneDNN convolutions through the XLA FFI, the eval
post-ops, and the ``impl="cpu"`` kernels behind the models' conv / BatchNorm / pool factories.

Nothing imports this package unless asked: :func:`resnet_flax.models.layers.kernels` imports
:mod:`resnet_flax.cpu.kernels` (which registers ``impl="cpu"``) the first time a model built
with ``impl="cpu"`` (or ``"auto"`` on a CPU) runs. The models never import it.
"""
