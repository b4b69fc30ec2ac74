"""torchvision-layout VGG with batch norm (KD_wo_CE's VGG11 / VGG19 teachers and students).

`features` is torchvision's Sequential (conv3x3 with bias, BN, ReLU per width; MaxPool2d(2) at
each "M"), then a global average pool to 1x1 and torchvision's classifier MLP
Linear(512, 4096)-ReLU-Dropout-Linear(4096, 4096)-ReLU-Dropout-Linear(4096, C). Module names are
torchvision's (`features.N`, `classifier.N`), so its state dicts load key for key, except
classifier.0, which is (4096, 25088) there: torchvision pools to 7x7, these models to 1x1.

Taps: stem (block 0's last ReLU), stageK_pre / stageK (block K's last BN / ReLU, before its max
pool; K = 1..4), pool (the flat 512 feature), logits.
Generalized layers: every ReLU of `features` ("features.N"), "flatten", and the classifier's two
ReLUs ("classifier.1", "classifier.4"): 11 for vgg11_bn, 19 for vgg19_bn.
Init (torchvision's): He fan-out normal convs, zero conv biases, BN 1/0, Linear N(0, 0.01), zero
bias.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .base import TapNet, Walk, _no_walk

M = 0  # a max pool in a configuration
VGG_TV_CFGS: dict[str, tuple[int, ...]] = {
    "A": (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    "E": (
        64,
        64,
        M,
        128,
        128,
        M,
        256,
        256,
        256,
        256,
        M,
        512,
        512,
        512,
        512,
        M,
        512,
        512,
        512,
        512,
        M,
    ),
}


class VGGTV(TapNet):
    """VGG-BN with torchvision's layer layout; `cfg` lists conv widths and max pools (0)."""

    tap_names = (
        "stem",
        *(f"stage{k}{s}" for k in range(1, 5) for s in ("_pre", "")),
        "pool",
    )
    linear_init = "normal"

    def __init__(self, cfg: Sequence[int], num_classes: int = 100, image_size: int = 32) -> None:
        super().__init__()
        if sum(1 for v in cfg if v == M) != 5:
            raise ValueError("a VGG configuration has five max pools")
        layers: list[nn.Module] = []
        in_channels = 3
        for v in cfg:
            if v == M:
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels, 4096),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )
        self._kinds = tuple(type(m).__name__ for m in self.features)
        self.reset_parameters()

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        block = 0
        pre = x
        for i, (layer, kind) in enumerate(zip(self.features, self._kinds, strict=True)):
            if kind == "MaxPool2d":
                name = "stem" if block == 0 else f"stage{block}"
                if block:
                    out[f"{name}_pre"] = pre
                out[name] = x
                block += 1
            x = layer(x)
            if kind == "BatchNorm2d":
                pre = x
            elif kind == "ReLU":
                x = walk(x, f"features.{i}")
        x = walk(self.avgpool(x).flatten(1), "flatten")
        out["pool"] = x
        for i, layer in enumerate(self.classifier):
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                x = walk(x, f"classifier.{i}")
        out["logits"] = x
        return out


def vgg_tv(cfg: str, num_classes: int = 100, image_size: int = 32) -> VGGTV:
    """VGG-BN for torchvision configuration `cfg` ("A": vgg11_bn, "E": vgg19_bn)."""
    return VGGTV(VGG_TV_CFGS[cfg], num_classes, image_size)
