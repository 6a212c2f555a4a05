"""The model families and their registry, built from one conv, norm and pool factory
(:mod:`resnet_flax.models.layers`). Nothing here depends on a backend's kernels."""
