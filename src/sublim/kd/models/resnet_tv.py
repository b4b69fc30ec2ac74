"""torchvision-layout ResNets for small images (KD_wo_CE's ResNet9 / ResNet18 / ResNet34).

BasicBlock stages of widths 64, 128, 256, 512 (strides 1, 2, 2, 2) with torchvision's module
names (conv1, bn1, layerK.i.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}), so a torchvision
state dict loads after one rename: `fc.` -> `classifier.`. The stem is a 3x3 stride-1 conv (not
7x7/2), followed by a 3x3/2 max pool only for inputs larger than 32 px (64 px TinyImageNet).

Taps: stem (post-ReLU, before the max pool), stageK_pre / stageK (K = 1..4), pool, logits.
Generalized layers: 0 "relu" (stem), every block "layerK.i", "flatten": 6 for resnet9 (one
block per stage), 10 for resnet18, 18 for resnet34.
Init (torchvision with `zero_init_residual`): He fan-out normal convs, BN 1/0 with the last BN
of every block zeroed, PyTorch's default Linear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import TapNet, Walk, _conv3x3, _no_walk
from .resnet import BasicBlock, _resnet_stages

# torchvision key -> ours, as prefixes
TORCHVISION_RENAMES = {"fc.": "classifier."}


class ResNetTV(TapNet):
    """BasicBlock ResNet with `blocks[k]` blocks in stage k; 3x3 stem; max pool above 32 px."""

    tap_names = (
        "stem",
        *(f"stage{k}{s}" for k in range(1, 5) for s in ("_pre", "")),
        "pool",
    )
    linear_init = "torch"

    def __init__(self, blocks: Sequence[int], num_classes: int = 100, image_size: int = 32) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if image_size > 32 else None
        in_planes, stages = 64, []
        for planes, n, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2), strict=True):
            layer = [BasicBlock(in_planes, planes, stride)]
            layer += [BasicBlock(planes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layer))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.classifier = nn.Linear(512, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """He fan-out convs, BN 1/0, default Linear; each block's last BN weight zero."""
        super().reset_parameters(generator)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        out = {"stem": x}
        x = walk(x, "relu")
        if self.maxpool is not None:
            x = self.maxpool(x)
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        out.update(_resnet_stages(x, stages, walk))
        out["logits"] = self.classifier(out["pool"])
        return out
