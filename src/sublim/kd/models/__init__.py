"""CIFAR-style classifiers with named feature taps: the standard CIFAR KD benchmark's models
(CIFAR ResNets, WRNs, VGGs, MobileNetV2, ShuffleNet V1/V2 and RepDistiller's CIFAR ResNet50,
"resnet50": 3x3 stem, no max pool) and KD_wo_CE's (torchvision-layout ResNet9/18/34,
VGG11/19-BN, MobileNetV2 x1.0, ViT-B, ViT-ETT), plus mdistiller's ImageNet models
(resnet18/34/50_imagenet in torchvision's layout, mobilenetv1; 224 px).

The definitions follow RepDistiller / CRD (Tian et al., also used by mdistiller) layer for layer:
same widths, strides, shortcuts and parameter counts, and the same initialisation. Module names
match RepDistiller's too, so a RepDistiller state dict loads after renaming its classifier keys
(`fc.` for ResNets and WRNs, `classifier.0.` for MobileNetV2, `linear.` for the ShuffleNets
and ResNet50) to `classifier.`.

Every model is a `TapNet`: `forward(x, taps)` returns a dict with "logits" and the requested
intermediate outputs ("taps"), named uniformly across families so that a distillation loss reads
a feature by name, never by position or channel count:

- "stem": output of the stem (after its ReLU where it has one),
- "stageK": output of stage K, post-activation (K = 1..3, or 1..4 for VGG and MobileNetV2),
- "stageK_pre": the same output before its final activation, where there is one,
- "pool": the flattened globally pooled feature the classifier reads, shape (D,),
- "logits".

Taps are references to tensors the forward computes anyway; requesting them costs nothing.

Departure from RepDistiller: pooling before the classifier is a global average pool. At 32x32 it
equals RepDistiller's fixed-size pools exactly; unlike them it also works for 64x64 inputs.

Every model can also be read by generalized layer (KD_wo_CE's numbering: the output of each
ReLU, residual / inverted / encoder block and the Flatten, in order): `layer_table(in_shape)`,
`forward_layers(x, layers, detach_after=, stop_after=)`, `param_groups()`; each family's module
documents its table. KD_wo_CE's models are built for one image size (`create_model(...,
image_size=)`): the ResNets' max pool, MobileNetV2's stem stride and the ViTs' patch size follow it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from ...errors import ConfigError
from ..config import KD_DATASETS, MODEL_NAMES
from .base import GenLayer, TapNet
from .imagenet import ImageNetResNet, resnet_imagenet
from .mobilenet import MobileNetV2
from .mobilenet_tl import MobileNetV2TL
from .mobilenetv1 import MobileNetV1
from .resnet import CifarResNet
from .resnet50 import BottleneckResNet
from .resnet_tv import ResNetTV
from .shufflenet import ShuffleNetV1, ShuffleNetV2
from .vgg import VGG, VGG_CFGS
from .vgg_tv import VGGTV, vgg_tv
from .vit import VisionTransformer
from .wrn import WideResNet

__all__ = [
    "MODELS",
    "BottleneckResNet",
    "CifarResNet",
    "GenLayer",
    "ImageNetResNet",
    "MobileNetV2",
    "MobileNetV1",
    "MobileNetV2TL",
    "ResNetTV",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "TapNet",
    "VGG",
    "VGGTV",
    "VisionTransformer",
    "WideResNet",
    "create_model",
    "layer_rows",
    "parameter_count",
]

_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def _any_size(factory: Callable[[int], TapNet], num_classes: int, image_size: int = 32) -> TapNet:
    """The benchmark's models adapt to the input at forward time: the size is not needed."""
    return factory(num_classes)


# name -> factory(num_classes, image_size=...)
MODELS: dict[str, Callable[..., TapNet]] = {
    "resnet8": partial(CifarResNet, 8, _SMALL),
    "resnet14": partial(CifarResNet, 14, _SMALL),
    "resnet20": partial(CifarResNet, 20, _SMALL),
    "resnet32": partial(CifarResNet, 32, _SMALL),
    "resnet44": partial(CifarResNet, 44, _SMALL),
    "resnet56": partial(CifarResNet, 56, _SMALL),
    "resnet110": partial(CifarResNet, 110, _SMALL),
    # The experiment notes' "ResNet-112" (18 blocks per stage, 16/32/64 channels) is this same
    # network: 6 * 18 + 2 = 110 weighted layers. The alias keeps their name usable.
    "resnet112": partial(CifarResNet, 110, _SMALL),
    "resnet8x4": partial(CifarResNet, 8, _X4),
    "resnet32x4": partial(CifarResNet, 32, _X4),
    "wrn_16_2": partial(WideResNet, 16, 2),
    "wrn_40_1": partial(WideResNet, 40, 1),
    "wrn_40_2": partial(WideResNet, 40, 2),
    "vgg8": partial(VGG, VGG_CFGS["vgg8"]),
    "vgg13": partial(VGG, VGG_CFGS["vgg13"]),
    "mobilenetv2": partial(MobileNetV2, 6, 0.5),  # RepDistiller's `mobile_half`
    "shufflev1": partial(ShuffleNetV1, (240, 480, 960), (4, 8, 4), 3),  # RD's `ShuffleV1`
    "shufflev2": partial(ShuffleNetV2, (116, 232, 464, 1024), (3, 7, 3)),  # `ShuffleV2`, size 1
    # RepDistiller's CIFAR `ResNet50` (resnetv2.py: 3x3 stem, no max pool), not torchvision's
    "resnet50": partial(BottleneckResNet, (3, 4, 6, 3)),
}
MODELS = {name: partial(_any_size, factory) for name, factory in MODELS.items()}
MODELS |= {
    "resnet9": partial(ResNetTV, (1, 1, 1, 1)),
    "resnet18": partial(ResNetTV, (2, 2, 2, 2)),
    "resnet34": partial(ResNetTV, (3, 4, 6, 3)),
    "vgg11_bn": partial(vgg_tv, "A"),
    "vgg19_bn": partial(vgg_tv, "E"),
    "mobilenetv2_w1": MobileNetV2TL,
    "vit_b": partial(VisionTransformer, 12, 768, 12, 3072),
    "vit_ett": partial(VisionTransformer, 8, 192, 6, 576),
    # mdistiller's ImageNet models (224 px; torchvision ResNet keys, `fc.` -> `classifier.`)
    "resnet18_imagenet": partial(resnet_imagenet, 18),
    "resnet34_imagenet": partial(resnet_imagenet, 34),
    "resnet50_imagenet": partial(resnet_imagenet, 50),
    "mobilenetv1": MobileNetV1,
}


if tuple(MODELS) != MODEL_NAMES:  # the config validates names without importing this module
    raise ImportError("kd.models.MODELS and kd.config.MODEL_NAMES disagree")


def create_model(
    name: str,
    num_classes: int = 100,
    *,
    generator: torch.Generator | None = None,
    image_size: int = 32,
) -> TapNet:
    """Build model `name` for `num_classes` classes and `image_size`-pixel square inputs, with
    its reference initialisation (RepDistiller's, torchvision's or tonylins').

    With a `generator`, every initial value is drawn from it and the global RNG is left alone
    (the modules are built on the meta device, then materialised and initialised).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(MODELS)}")
    if generator is None:
        return MODELS[name](num_classes, image_size=image_size)
    with torch.device("meta"):
        model = MODELS[name](num_classes, image_size=image_size)
    model.to_empty(device="cpu")
    model.reset_parameters(generator)
    return model


def layer_rows(name: str, dataset: str) -> list[GenLayer]:
    """The generalized layers (index, name, shape) of model `name` built for `dataset`, for
    `sublim kd layers MODEL --dataset D`; built on the meta device, so instant even for vit_b."""
    if dataset not in KD_DATASETS:
        raise ConfigError("--dataset", dataset, f"allowed: {', '.join(KD_DATASETS)}")
    if name not in MODELS:
        raise ConfigError("MODEL", name, f"allowed: {', '.join(MODELS)}")
    classes, shape = KD_DATASETS[dataset]
    with torch.device("meta"):
        model = MODELS[name](classes, image_size=shape[1])
    return model.layer_table(shape)


def parameter_count(model: nn.Module) -> int:
    """Number of parameter elements (trainable or not; shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())
