"""Weights in and out: ``.pth`` and safetensors files without torch, the torchvision key table,
and torchvision's published weights with their evaluation transforms."""
