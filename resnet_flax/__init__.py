"""resnet-flax: torchvision's ResNet and VGG families and timm's ResNet family (ResNet-D, SE,
ECA, ResNet-RS, ResNetV2 and BiT) in pure-functional Flax.

Build a model (``create_model``: a Flax module, plain XLA, every JAX transform), load
torchvision's and timm's published weights by tag (``load_pretrained``: the model and its
variables; ``list_pretrained``), import and export torchvision (and timm) weights
(``load_torchvision``, ``export_torchvision``, ``save_torchvision``), preprocess like
torchvision (``preprocess``), inspect (``summary``), use as a backbone (``extract_features``),
run inference with BatchNorm folded into the convolutions (``fold_batch_norm``), and use any
model as an NNX module (``to_nnx``, ``to_linen_variables``).

The package's layers: ``models`` (the networks), ``cpu`` (XLA:CPU kernels, loaded only when a
model asks for ``impl="cpu"``), ``io`` (weights in and out), ``inference`` and ``train`` (the
trainer, with its ``configs``); see ARCHITECTURE.md.
"""

from resnet_flax.inference.features import extract_features
from resnet_flax.inference.fold import fold_batch_norm
from resnet_flax.inference.preprocess import imagenet_classes, preprocess
from resnet_flax.inference.summary import summary
from resnet_flax.io.convert import export_torchvision, load_torchvision, save_torchvision
from resnet_flax.io.hub import list_pretrained, load_pretrained
from resnet_flax.io.weights import TORCHVISION_MODELS
from resnet_flax.models.bridge import to_linen_variables, to_nnx
from resnet_flax.models.registry import TIMM_MODELS, create_model, list_models, model_options

__all__ = [
    "TIMM_MODELS",
    "TORCHVISION_MODELS",
    "create_model",
    "export_torchvision",
    "extract_features",
    "fold_batch_norm",
    "imagenet_classes",
    "list_models",
    "list_pretrained",
    "load_pretrained",
    "load_torchvision",
    "model_options",
    "preprocess",
    "save_torchvision",
    "summary",
    "to_linen_variables",
    "to_nnx",
]
