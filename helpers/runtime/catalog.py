"""What the model zoo builds by name, without importing torch (the run configuration validates against it)."""

from __future__ import annotations

#: torchvision classification models the zoo builds by name (the model code lives in the training stage).
BACKBONES: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101",
    "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "densenet121", "densenet161",
    "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "convnext_tiny",
)

#: Pretrained-weight choices besides a path to a local ``.pth`` file.
WEIGHTS: tuple[str, ...] = ("DEFAULT", "none")

#: Classifier heads put on the backbone's features.
HEADS: tuple[str, ...] = ("linear", "mlp")
