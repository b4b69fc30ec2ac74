"""MobileNetV2 for CIFAR (RepDistiller mobilenetv2.py, `mobile_half`: expansion 6, width 0.5).

Taps: stem, stage1, stage2, stage3, stage4, pool. Stages group the seven inverted-residual groups
as RepDistiller's features do: (0, 1), (2,), (3, 4), (5, 6). Blocks end in a linear bottleneck
(BN, no ReLU), so there are no "_pre" taps. The stem has stride 2, so at 32x32 the stages are
16x16, 8x8, 4x4 and 2x2; "pool" is the 1280-channel 1x1 conv's output, pooled.

Generalized layers (20): the stem ReLU "conv1.2", the 17 blocks "blocks.G.i", the 1x1 conv's
ReLU "conv2.2" and "flatten".
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import TapNet, Walk, _global_pool, _no_walk


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN; identity added if shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


class MobileNetV2(TapNet):
    """MobileNetV2 for 32x32 inputs with expansion `expand_ratio` and width `width_mult`."""

    tap_names = ("stem", "stage1", "stage2", "stage3", "stage4", "pool")
    linear_init = "normal"
    feature_taps = ("stage1", "stage2", "stage3", "stage4")  # RepDistiller's f1..f4
    preact_taps = feature_taps  # the blocks end linear (BN, no ReLU): RepDistiller returns the same
    # (expansion t, channels c, blocks n, first stride s); t = 1 for the first group.
    SETTING = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    STAGE_GROUPS = ((0, 1), (2,), (3, 4), (5, 6))

    def __init__(
        self, expand_ratio: int = 6, width_mult: float = 0.5, num_classes: int = 100
    ) -> None:
        super().__init__()
        in_channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_channels, 3, 2)
        groups = []
        for t, c, n, s in self.SETTING:
            t = expand_ratio if t != 1 else 1
            out_channels = int(c * width_mult)
            blocks = []
            for stride in [s] + [1] * (n - 1):
                blocks.append(InvertedResidual(in_channels, out_channels, stride, t))
                in_channels = out_channels
            groups.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(groups)
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_channels, last_channel, 1, 1)
        self.classifier = nn.Linear(last_channel, num_classes)
        self.reset_parameters()

    def preact_bns(self) -> dict[str, nn.BatchNorm2d]:
        """Per stage tap, the last block's final BN (its linear bottleneck's output, plus the
        identity where the block has one): mdistiller's get_bn_before_relu, although no ReLU
        follows (the blocks end linear)."""
        return {
            f"stage{k}": self.blocks[group[-1]][-1].conv[-1]
            for k, group in enumerate(self.STAGE_GROUPS, start=1)
        }

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        x = self.conv1(x)
        out = {"stem": x}
        x = walk(x, "conv1.2")
        for k, group in enumerate(self.STAGE_GROUPS, start=1):
            for g in group:
                for i, block in enumerate(self.blocks[g]):
                    x = walk(block(x), f"blocks.{g}.{i}")
            out[f"stage{k}"] = x
        x = walk(self.conv2(x), "conv2.2")
        out["pool"] = x = walk(_global_pool(x), "flatten")
        out["logits"] = self.classifier(x)
        return out
