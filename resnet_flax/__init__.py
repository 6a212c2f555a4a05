"""resnet-flax: torchvision's ResNet and VGG families in pure-functional Flax."""

from resnet_flax.registry import TORCHVISION_MODELS, create_model, list_models, model_options

__all__ = ["TORCHVISION_MODELS", "create_model", "list_models", "model_options"]
