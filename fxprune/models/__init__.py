"""Built-in CIFAR models (ResNet-20/32/56/110, VGG16-BN, MobileNetV2) and their registry.

Importing this package imports every model module so their ``@register_model``
decorators run; use ``create_model("resnet56", num_classes=10)`` to build one.
"""

from fxprune.models import cifar_resnet, mobilenetv2, vgg  # noqa: F401 - fill the registry
from fxprune.models.registry import (
    create_model,
    default_input_shape,
    list_models,
    register_model,
)

__all__ = ["create_model", "default_input_shape", "list_models", "register_model"]
