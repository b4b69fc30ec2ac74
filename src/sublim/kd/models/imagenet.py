"""mdistiller's ImageNet ResNets (models/imagenet/resnet.py): torchvision's ResNet18/34/50, keys
and function, registered as "resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet".

7x7/2 stem conv (64) + BN + ReLU + 3x3/2 max pool, four stages (planes 64, 128, 256, 512; strides
1, 2, 2, 2) of BasicBlocks (R18, R34) or Bottlenecks (R50: expansion 4, stride on the 3x3 conv),
a 1x1 conv + BN `downsample` where the shape changes. Module names are torchvision's (conv1, bn1,
layerK.i.{conv1,bn1,conv2,bn2[,conv3,bn3]}, layerK.0.downsample.{0,1}), `fc.` renamed
`classifier.` (`TORCHVISION_RENAMES`), so torchvision's ImageNet files load after that rename.
Parameters at 1000 classes: 11,689,512 / 21,797,672 / 25,557,032.

mdistiller moves each block's final ReLU to the start of the next block (a ReLU on its input), so
its stage outputs are pre-activation; the network computes the same function as torchvision's,
which is what this module computes (ReLU after each block). Its feature lists map to our taps:

- `feats` = ReLU of [stem (before the max pool), layer1..4] -> "stem", "stage1".."stage4";
- `preact_feats` -> "stage1_pre".."stage4_pre" (the last block's residual sum; stageK ==
  relu(stageK_pre)); its pre-ReLU stem (bn1's output) has no tap;
- `pooled_feat` -> "pool" (a global average pool: at 224 px its AvgPool2d(7) exactly);
- `get_bn_before_relu` (layer2..4's last-block BN) -> `preact_bns()`, which also names layer1's.

Taps at 224 px: stem 64@112; stage1..4 64@56, 128@28, 256@14, 512@7 (R18/34) or 256@56,
512@28, 1024@14, 2048@7 (R50); pool 512 / 2048.
Generalized layers: 0 "relu" (stem), every block "layerK.i", "flatten" (10 for R18, 18 for R34
and R50).
Init (mdistiller's): convs N(0, 2 / (k*k*out_channels)), BN 1/0, PyTorch's default Linear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .base import TapNet, Walk, _conv3x3, _no_walk
from .resnet import BasicBlock, _resnet_stages

# torchvision key -> ours, as prefixes
TORCHVISION_RENAMES = {"fc.": "classifier."}
EXPANSION = 4


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5): 1x1-BN-ReLU, 3x3 (stride)-BN-ReLU, 1x1 (x4)-BN, plus
    the shortcut; ReLU by the caller (`forward` applies it)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = EXPANSION * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def preact(self, x: Tensor) -> Tensor:
        """The residual sum before the block's final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return out + (x if self.downsample is None else self.downsample(x))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preact(x))


class ImageNetResNet(TapNet):
    """torchvision-layout ResNet for 224 px ImageNet inputs (any size >= 32 px works): `blocks[k]`
    blocks in stage k, of BasicBlocks or (`bottleneck`) Bottlenecks."""

    tap_names = (
        "stem",
        *(f"stage{k}{s}" for k in range(1, 5) for s in ("_pre", "")),
        "pool",
    )
    linear_init = "torch"
    feature_taps = ("stage1", "stage2", "stage3", "stage4")  # mdistiller's feats[1:]
    preact_taps = ("stage1_pre", "stage2_pre", "stage3_pre", "stage4_pre")  # preact_feats[1:]

    def __init__(
        self,
        blocks: Sequence[int],
        bottleneck: bool = False,
        num_classes: int = 1000,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        block, expansion = (Bottleneck, EXPANSION) if bottleneck else (BasicBlock, 1)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_planes, stages = 64, []
        for planes, n, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2), strict=True):
            layer = [block(in_planes, planes, stride)]
            in_planes = expansion * planes
            layer += [block(in_planes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.classifier = nn.Linear(in_planes, num_classes)  # torchvision's `fc`
        self.reset_parameters()

    def _stages(self) -> tuple[nn.Sequential, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def preact_bns(self) -> dict[str, nn.BatchNorm2d]:
        """Per preact tap, the BN whose output plus the shortcut forms it: the stage's last
        block's bn2 (BasicBlock) or bn3 (Bottleneck); mdistiller's get_bn_before_relu lists
        stages 2..4 of these."""
        out = {}
        for k, stage in enumerate(self._stages(), start=1):
            last = stage[-1]
            out[f"stage{k}_pre"] = last.bn3 if isinstance(last, Bottleneck) else last.bn2
        return out

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        out = {"stem": x}
        x = self.maxpool(walk(x, "relu"))
        out.update(_resnet_stages(x, self._stages(), walk))
        out["logits"] = self.classifier(out["pool"])
        return out


def resnet_imagenet(depth: int, num_classes: int = 1000, image_size: int = 224) -> ImageNetResNet:
    """mdistiller's / torchvision's ResNet18, 34 or 50 (`image_size` is not needed: any size
    >= 32 px runs)."""
    configs = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True)}
    if depth not in configs:
        raise ValueError(f"ImageNet ResNet depth {depth}; choose from {sorted(configs)}")
    blocks, bottleneck = configs[depth]
    return ImageNetResNet(blocks, bottleneck, num_classes, image_size)
