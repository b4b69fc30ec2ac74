"""MobileNetV2 at width 1.0 as in tonylins/pytorch-mobilenet-v2 (KD_wo_CE's MobileNetV2 student).

`features`: features.0 = 3x3 conv 32-BN-ReLU6 (stride 1 for inputs of 32 px or less, else 2, so
TinyImageNet's shapes equal CIFAR's after the stem), features.1..17 = inverted residuals (t = 1:
depthwise-BN-ReLU6-project-BN; else expand-BN-ReLU6-depthwise-BN-ReLU6-project-BN; identity
added when stride 1 and widths match), features.18 = 1x1 conv 1280-BN-ReLU6; then a global
average pool and `classifier` Linear(1280, C). Module names are tonylins'.

Taps: stem, stage1..4 (the ends of blocks 3, 6, 13, 17: 24x16x16, 32x8x8, 96x4x4, 320x2x2 at
32 px), pool (1280), logits.
Generalized layers (20): "features.0.2", the blocks "features.1".."features.17",
"features.18.2", "flatten".
Init (tonylins'): He fan-out normal convs, BN 1/0, Linear N(0, 0.01), zero bias.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import TapNet, Walk, _global_pool, _no_walk

# (expansion t, channels c, blocks n, first stride s)
SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STAGE_ENDS = {3: "stage1", 6: "stage2", 13: "stage3", 17: "stage4"}  # features index -> tap


class InvertedResidualTL(nn.Module):
    """tonylins' inverted residual with ReLU6 and a linear bottleneck."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        expand: list[nn.Module] = []
        if expand_ratio != 1:
            expand = [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        self.conv = nn.Sequential(
            *expand,
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _conv_bn_relu6(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(),
    )


class MobileNetV2TL(TapNet):
    """tonylins' MobileNetV2, width 1.0; the stem's stride depends on the input size."""

    tap_names = ("stem", "stage1", "stage2", "stage3", "stage4", "pool")
    linear_init = "normal"

    def __init__(self, num_classes: int = 100, image_size: int = 32) -> None:
        super().__init__()
        in_channels, last_channel = 32, 1280
        layers: list[nn.Module] = [_conv_bn_relu6(3, in_channels, 3, 1 if image_size <= 32 else 2)]
        for t, c, n, s in SETTING:
            for i in range(n):
                layers.append(InvertedResidualTL(in_channels, c, s if i == 0 else 1, t))
                in_channels = c
        layers.append(_conv_bn_relu6(in_channels, last_channel, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last_channel, num_classes)
        self.reset_parameters()

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        last = len(self.features) - 1
        out: dict[str, Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == 0:
                out["stem"] = x
            elif i in STAGE_ENDS:
                out[STAGE_ENDS[i]] = x
            x = walk(x, f"features.{i}.2" if i in (0, last) else f"features.{i}")
        out["pool"] = x = walk(_global_pool(x), "flatten")
        out["logits"] = self.classifier(x)
        return out
