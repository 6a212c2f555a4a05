"""The XLA:CPU backend: compiler settings, oneDNN convolutions through the XLA FFI, the eval
post-ops, and the ``impl="cpu"`` kernels behind the models' conv / BatchNorm / pool factories.

Importing this package registers those kernels (:mod:`resnet_flax.cpu.kernels`);
``import resnet_flax`` does so. The models never import it.
"""

from resnet_flax.cpu import kernels as kernels  # registers impl="cpu"
