"""ShuffleNet V1 and V2 for CIFAR (RepDistiller ShuffleNetv1.py `ShuffleV1` and ShuffleNetv2.py
`ShuffleV2`, net_size 1), with RepDistiller's module names (`linear.` renamed `classifier.`).

Both have a 1x1 stride-1 stem conv 3->24 + BN + ReLU (no max pool) and three stages that each
halve the resolution, so at 32x32 the stages are 16x16, 8x8 and 4x4.

Taps: stem, stageK_pre, stageK (K = 1..3), pool, logits.
- ShuffleV1: "stageK_pre" is the last block's residual sum (bn3 output + input) before its ReLU;
  stageK == relu(stageK_pre). Channels 240, 480, 960; "pool" 960.
- ShuffleV2: "stageK_pre" is cat[x1, bn3 output] of the stage's last block, *before* its channel
  shuffle (x1 the untouched half of the split); stageK == shuffle(cat[x1, relu(bn3 output)]), which
  is shuffle(relu(stageK_pre)) when x1 >= 0 (always, inside the network). Channels 116, 232, 464;
  "pool" is the 1024-channel 1x1 head conv's BN-ReLU output, pooled.

Generalized layers: "relu" (stem), every block "layerK.i", for ShuffleV2 the head conv's ReLU
"relu2", then "flatten": 18 for ShuffleV1, 19 for ShuffleV2.
Init: PyTorch's defaults (RepDistiller sets none): kaiming-uniform(a=sqrt 5) convs and Linear
weights, uniform Linear bias, BN 1/0. Modules are registered in RepDistiller's construction order,
so a generator seeded s draws the weights RepDistiller's model gets after `torch.manual_seed(s)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import TapNet, Walk, _global_pool, _no_walk
from .resnet import CifarResNet, _resnet_stages

_STEM = 24


def _channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave `groups` channel groups: (N, g*c, H, W) -> channel order (c, g)."""
    if groups == 1:
        return x
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def _conv_bn(
    inp: int, oup: int, kernel: int = 1, stride: int = 1, groups: int = 1
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A bias-free k x k conv (padding k // 2) and the BN that follows it."""
    conv = nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(oup)


@torch.no_grad()
def _torch_default_init(model: nn.Module, generator: torch.Generator | None) -> None:
    """PyTorch's default initialisation of every Conv2d, Linear and BatchNorm2d, from `generator`."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                bound = 1.0 / math.sqrt(m.weight[0].numel())  # 1 / sqrt(fan_in)
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()


class _ShuffleNet(TapNet):
    """What both versions share: tap names, benchmark taps and PyTorch's default init."""

    tap_names = CifarResNet.tap_names
    feature_taps = ("stage1", "stage2", "stage3")  # RepDistiller's f1..f3 (post-activation)
    preact_taps = ("stage1_pre", "stage2_pre", "stage3_pre")

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default init, which RepDistiller's ShuffleNets keep."""
        _torch_default_init(self, generator)


# -- V1 ------------------------------------------------------------------------------------------


class ShuffleBottleneck(nn.Module):
    """1x1 group conv-BN-ReLU, channel shuffle, 3x3 depthwise-BN-ReLU, 1x1 group conv-BN; then
    + input (stride 1) or concatenated with the 3x3/2 average-pooled input (stride 2); ReLU by
    the caller. The first block after the 24-channel stem has an ungrouped first conv."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_planes // 4
        g1 = 1 if in_planes == _STEM else groups
        self.conv1, self.bn1 = _conv_bn(in_planes, mid, groups=g1)
        self.conv2, self.bn2 = _conv_bn(mid, mid, 3, stride, groups=mid)
        self.conv3, self.bn3 = _conv_bn(mid, out_planes, groups=groups)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else None

    def preact(self, x: Tensor) -> Tensor:
        """The block's output before its final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = _channel_shuffle(out, self.conv1.groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is None:
            return out + x
        return torch.cat([out, self.shortcut(x)], 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preact(x))


class ShuffleNetV1(_ShuffleNet):
    """ShuffleNet V1 (RepDistiller `ShuffleV1`: out_planes 240/480/960, blocks 4/8/4, 3 groups).

    Each stage's first block has stride 2 and produces out_planes - in_planes channels, to which
    the pooled input is concatenated; the others add their input.
    """

    def __init__(
        self,
        out_planes: Sequence[int] = (240, 480, 960),
        num_blocks: Sequence[int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, _STEM)
        in_planes, stages = _STEM, []
        for planes, n in zip(out_planes, num_blocks, strict=True):
            blocks = [ShuffleBottleneck(in_planes, planes - in_planes, 2, groups)]
            blocks += [ShuffleBottleneck(planes, planes, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.classifier = nn.Linear(in_planes, num_classes)  # RepDistiller's `linear`
        # construction drew PyTorch's default init, RepDistiller's: no reset needed

    def preact_bns(self) -> dict[str, nn.BatchNorm2d]:
        """Per preact tap, the BN whose output plus the block input forms it: each stage's last
        block is a stride-1 identity-add block, so its bn3 (mdistiller's get_bn_before_relu,
        which mdistiller itself does not implement for ShuffleNets)."""
        stages = (self.layer1, self.layer2, self.layer3)
        return {f"stage{k}_pre": s[-1].bn3 for k, s in enumerate(stages, start=1)}

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        out = {"stem": x}
        x = walk(x, "relu")
        out.update(_resnet_stages(x, (self.layer1, self.layer2, self.layer3), walk))
        out["logits"] = self.classifier(out["pool"])
        return out


# -- V2 ------------------------------------------------------------------------------------------


class ShuffleDownBlock(nn.Module):
    """Stride-2 block: left 3x3/2 depthwise-BN, 1x1-BN-ReLU; right 1x1-BN-ReLU, 3x3/2
    depthwise-BN, 1x1-BN-ReLU; each branch gives half the output channels; concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1, self.bn1 = _conv_bn(in_channels, in_channels, 3, 2, groups=in_channels)
        self.conv2, self.bn2 = _conv_bn(in_channels, mid)
        self.conv3, self.bn3 = _conv_bn(in_channels, mid)
        self.conv4, self.bn4 = _conv_bn(mid, mid, 3, 2, groups=mid)
        self.conv5, self.bn5 = _conv_bn(mid, mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return _channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleV2Block(nn.Module):
    """Split channels in halves (x1, x2); x2 goes through 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN
    (`branch`), then ReLU; output shuffle(cat[x1, relu(branch)])."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2  # RepDistiller: int(C * 0.5) channels in x1
        c = channels - self.split
        self.conv1, self.bn1 = _conv_bn(c, c)
        self.conv2, self.bn2 = _conv_bn(c, c, 3, groups=c)
        self.conv3, self.bn3 = _conv_bn(c, c)

    def halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x1 (passed through) and the second half's branch output before its ReLU."""
        x1, x2 = x[:, : self.split], x[:, self.split :]
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))
        return x1, self.bn3(self.conv3(out))

    def forward(self, x: Tensor) -> Tensor:
        x1, b = self.halves(x)
        return _channel_shuffle(torch.cat([x1, F.relu(b)], 1), 2)


class ShuffleNetV2(_ShuffleNet):
    """ShuffleNet V2 (RepDistiller `ShuffleV2`, net_size 1: channels 116/232/464, head 1024,
    3/7/3 basic blocks after each stage's down-sampling block)."""

    def __init__(
        self,
        out_channels: Sequence[int] = (116, 232, 464, 1024),
        num_blocks: Sequence[int] = (3, 7, 3),
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, _STEM)
        in_channels, stages = _STEM, []
        for channels, n in zip(out_channels[:3], num_blocks, strict=True):
            blocks = [ShuffleDownBlock(in_channels, channels)]
            blocks += [ShuffleV2Block(channels) for _ in range(n)]
            stages.append(nn.Sequential(*blocks))
            in_channels = channels
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2, self.bn2 = _conv_bn(in_channels, out_channels[3])
        self.classifier = nn.Linear(out_channels[3], num_classes)  # RepDistiller's `linear`

    def preact_bns(self) -> dict[str, nn.BatchNorm2d]:
        """Not defined: a ShuffleV2 preact tap is cat[x1, bn3 output], and its first half comes
        from no BN (RepDistiller and mdistiller raise NotImplementedError here too)."""
        raise NotImplementedError(
            "ShuffleNetV2 has no BN before each preact tap (half of it is the split's "
            "pass-through x1), so it cannot be an OFD teacher"
        )

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        out = {"stem": x}
        x = walk(x, "relu")
        for k, stage in enumerate((self.layer1, self.layer2, self.layer3), start=1):
            last = len(stage) - 1
            for i, block in enumerate(stage):
                if i < last:
                    x = walk(block(x), f"layer{k}.{i}")
            x1, b = stage[last].halves(x)
            out[f"stage{k}_pre"] = torch.cat([x1, b], 1)
            out[f"stage{k}"] = x = _channel_shuffle(torch.cat([x1, F.relu(b)], 1), 2)
            x = walk(x, f"layer{k}.{last}")
        x = walk(F.relu(self.bn2(self.conv2(x))), "relu2")
        out["pool"] = x = walk(_global_pool(x), "flatten")
        out["logits"] = self.classifier(x)
        return out
