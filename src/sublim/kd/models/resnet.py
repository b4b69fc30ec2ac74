"""CIFAR ResNets (RepDistiller resnet.py): post-activation BasicBlocks, 1x1 conv + BN shortcuts.

Taps: stem, stage1_pre, stage1, stage2_pre, stage2, stage3_pre, stage3, pool. "stageK_pre" is the
last block's residual sum before its ReLU; stageK == relu(stageK_pre).

Generalized layers (3n + 2): 0 "relu" (stem), then every block "layerK.i" (post-ReLU output),
then "flatten" (the pooled feature).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .base import TapNet, Walk, _conv3x3, _global_pool, _no_walk


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU (applied by the caller)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:  # RepDistiller: conv shortcut ("option B")
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def preact(self, x: Tensor) -> Tensor:
        """The residual sum before the block's final ReLU."""
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return out + (x if self.downsample is None else self.downsample(x))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preact(x))


class CifarResNet(TapNet):
    """ResNet for 32x32 inputs: 3x3 stem, 3 stages of `n` BasicBlocks, depth = 6n + 2.

    `widths` = (stem, stage1, stage2, stage3): (16, 16, 32, 64) for resnet8..110,
    (32, 64, 128, 256) for the x4 variants. Stages 2 and 3 stride 2.
    """

    tap_names = (
        "stem",
        "stage1_pre",
        "stage1",
        "stage2_pre",
        "stage2",
        "stage3_pre",
        "stage3",
        "pool",
    )
    linear_init = "torch"
    feature_taps = ("stage1", "stage2", "stage3")  # RepDistiller: post-ReLU block outputs
    preact_taps = ("stage1_pre", "stage2_pre", "stage3_pre")  # the residual sums

    def __init__(
        self, depth: int, widths: Sequence[int] = (16, 16, 32, 64), num_classes: int = 100
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            blocks = [BasicBlock(in_planes, planes, stride)]
            blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.classifier = nn.Linear(in_planes, num_classes)
        self.reset_parameters()

    def preact_bns(self) -> dict[str, nn.BatchNorm2d]:
        """Per preact tap, the BN whose output plus the shortcut forms it: the stage's last
        block's bn2 (mdistiller's get_bn_before_relu)."""
        stages = (self.layer1, self.layer2, self.layer3)
        return {f"stage{k}_pre": s[-1].bn2 for k, s in enumerate(stages, start=1)}

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        out = {"stem": x}
        x = walk(x, "relu")
        out.update(_resnet_stages(x, (self.layer1, self.layer2, self.layer3), walk))
        out["logits"] = self.classifier(out["pool"])
        return out


def _resnet_stages(x: Tensor, stages: Sequence[nn.Sequential], walk: Walk) -> dict[str, Tensor]:
    """Run BasicBlock stages `layer1..`: taps stageK_pre, stageK and pool, each block walked."""
    out = {}
    for k, stage in enumerate(stages, start=1):
        last = len(stage) - 1
        for i, block in enumerate(stage):
            if i < last:
                x = walk(block(x), f"layer{k}.{i}")
        pre = stage[last].preact(x)
        out[f"stage{k}_pre"] = pre
        out[f"stage{k}"] = x = F.relu(pre)
        x = walk(x, f"layer{k}.{last}")
    out["pool"] = x = walk(_global_pool(x), "flatten")
    return out
