"""resnet-flax: torchvision's ResNet and VGG families in pure-functional Flax.

Build (``create_model``), import and export torchvision weights (``load_torchvision``,
``export_torchvision``, ``save_torchvision``), preprocess like torchvision (``preprocess``),
inspect (``summary``), use as a backbone (``extract_features``) and run inference with
BatchNorm folded into the convolutions (``fold_batch_norm``).
"""

from resnet_flax.convert import export_torchvision, load_torchvision, save_torchvision
from resnet_flax.features import extract_features
from resnet_flax.fold import fold_batch_norm
from resnet_flax.preprocess import imagenet_classes, preprocess
from resnet_flax.registry import TORCHVISION_MODELS, create_model, list_models, model_options
from resnet_flax.summary import summary

__all__ = [
    "TORCHVISION_MODELS",
    "create_model",
    "export_torchvision",
    "extract_features",
    "fold_batch_norm",
    "imagenet_classes",
    "list_models",
    "load_torchvision",
    "model_options",
    "preprocess",
    "save_torchvision",
    "summary",
]
