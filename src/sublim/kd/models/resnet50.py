"""RepDistiller's CIFAR ResNet50 (resnetv2.py `ResNet50`), registered as "resnet50".

Not torchvision's ImageNet ResNet50: a 3x3 stride-1 stem conv (64) + BN + ReLU with no max pool,
then four stages of Bottleneck blocks (3, 4, 6, 3; planes 64, 128, 256, 512, expansion 4;
strides 1, 2, 2, 2 on the 3x3 conv), a 1x1 conv + BN projection shortcut where the shape changes,
ReLU after the add. Module names are RepDistiller's (`linear.` renamed `classifier.`).

Taps: stem, stageK_pre, stageK (K = 1..4), pool, logits; "stageK_pre" is the last block's
residual sum before its ReLU, stageK == relu(stageK_pre). At 32x32: 64@32, 256@32, 512@16,
1024@8, 2048@4, pool 2048.
Generalized layers (18): "relu" (stem), every block "layerK.i", "flatten".
Init (RepDistiller): He fan-out normal convs, BN 1/0 (no zero-init of the last BN), PyTorch's
default Linear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .base import TapNet, Walk, _conv3x3, _no_walk
from .resnet import _resnet_stages

EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3 (stride here)-BN-ReLU, 1x1 (x4)-BN, plus shortcut; ReLU by the caller."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = EXPANSION * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module | None = None  # RepDistiller's name, for state-dict keys
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def preact(self, x: Tensor) -> Tensor:
        """The residual sum before the block's final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return out + (x if self.shortcut is None else self.shortcut(x))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preact(x))


class BottleneckResNet(TapNet):
    """CIFAR ResNet of Bottleneck blocks, `blocks[k]` in stage k ((3, 4, 6, 3): ResNet50)."""

    tap_names = (
        "stem",
        *(f"stage{k}{s}" for k in range(1, 5) for s in ("_pre", "")),
        "pool",
    )
    linear_init = "torch"
    feature_taps = ("stage1", "stage2", "stage3", "stage4")  # RepDistiller's f1..f4
    preact_taps = ("stage1_pre", "stage2_pre", "stage3_pre", "stage4_pre")

    def __init__(self, blocks: Sequence[int] = (3, 4, 6, 3), num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes, stages = 64, []
        for planes, n, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2), strict=True):
            layer = [Bottleneck(in_planes, planes, stride)]
            layer += [Bottleneck(EXPANSION * planes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layer))
            in_planes = EXPANSION * planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.classifier = nn.Linear(in_planes, num_classes)  # RepDistiller's `linear`
        self.reset_parameters()

    def _stages(self) -> tuple[nn.Sequential, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def preact_bns(self) -> dict[str, nn.BatchNorm2d]:
        """Per preact tap, the BN whose output plus the shortcut forms it: the stage's last
        block's bn3 (mdistiller's get_bn_before_relu)."""
        return {f"stage{k}_pre": s[-1].bn3 for k, s in enumerate(self._stages(), start=1)}

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        out = {"stem": x}
        x = walk(x, "relu")
        out.update(_resnet_stages(x, self._stages(), walk))
        out["logits"] = self.classifier(out["pool"])
        return out
