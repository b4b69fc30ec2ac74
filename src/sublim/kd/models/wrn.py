"""Wide ResNets (RepDistiller wrn.py): pre-activation blocks, depth = 6n + 4, dropout 0.

Taps: stem (the first conv; no BN-ReLU), stage1_pre, stage1_bn, stage1, ..., stage3_pre,
stage3_bn, stage3, pool. "stageK_pre" is the stage's raw residual sum (what RepDistiller returns
with preact=False); "stageK_bn" is BN(stageK_pre) with the BN that follows: the first BN of the
next stage's first block (stages 1, 2) or the final BN (stage 3), i.e. what RepDistiller returns
with preact=True; "stageK" is relu(stageK_bn). All three are computed by every forward.

Generalized layers (3n + 2): every block's raw residual sum "blockK.layer.i", then the final
BN-ReLU "relu", then "flatten". The stem conv has no ReLU, so it is not one.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import TapNet, Walk, _conv3x3, _global_pool, _no_walk


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut (1x1 conv of the activation if shapes differ)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = _conv3x3(out_planes, out_planes)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut: nn.Module | None = None  # RepDistiller's name, for state-dict keys
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def activate(self, x: Tensor) -> Tensor:
        """The block's pre-activation relu(bn1(x)), i.e. the activated previous output."""
        return F.relu(self.bn1(x))

    def forward_activated(self, x: Tensor, a: Tensor) -> Tensor:
        """The block's output given its raw input `x` and `a = self.activate(x)`."""
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + (x if self.convShortcut is None else self.convShortcut(a))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_activated(x, self.activate(x))


class _WRNStage(nn.Module):
    """A stage of pre-activation blocks (RepDistiller's NetworkBlock; `layer` for state-dict keys)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        blocks = [PreActBlock(in_planes, out_planes, stride)]
        blocks += [PreActBlock(out_planes, out_planes) for _ in range(n - 1)]
        self.layer = nn.Sequential(*blocks)


class WideResNet(TapNet):
    """WRN-depth-k for 32x32 inputs: stem conv 16, stages 16k, 32k, 64k, final BN-ReLU."""

    tap_names = (
        "stem",
        "stage1_pre",
        "stage1_bn",
        "stage1",
        "stage2_pre",
        "stage2_bn",
        "stage2",
        "stage3_pre",
        "stage3_bn",
        "stage3",
        "pool",
    )
    linear_init = "torch_zero_bias"
    # RepDistiller's and mdistiller's WRN features are the raw residual sums (preact=False),
    # not the BN-ReLU that follows them
    feature_taps = ("stage1_pre", "stage2_pre", "stage3_pre")
    # preact=True: the following BN applied to each sum, without its ReLU
    preact_taps = ("stage1_bn", "stage2_bn", "stage3_bn")

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = _conv3x3(3, widths[0])
        self.block1 = _WRNStage(n, widths[0], widths[1], 1)
        self.block2 = _WRNStage(n, widths[1], widths[2], 2)
        self.block3 = _WRNStage(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.classifier = nn.Linear(widths[3], num_classes)
        self.reset_parameters()

    def preact_bns(self) -> dict[str, nn.BatchNorm2d]:
        """Per preact tap "stageK_bn", the BN that forms it: the next stage's first bn1, or the
        final bn1 (mdistiller's get_bn_before_relu)."""
        bns = (self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1)
        return {f"stage{k}_bn": bn for k, bn in enumerate(bns, start=1)}

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        x = self.conv1(x)
        out = {"stem": x}
        for k, stage in enumerate((self.block1, self.block2, self.block3), start=1):
            first = stage.layer[0]
            b = first.bn1(x)  # first.activate(x), its BN output kept as a tap
            a = F.relu(b)
            if k > 1:  # the previous stage's activated output is this stage's first activation
                out[f"stage{k - 1}_bn"] = b
                out[f"stage{k - 1}"] = a
            x = walk(first.forward_activated(x, a), f"block{k}.layer.0")
            for i, block in enumerate(stage.layer[1:], start=1):
                x = walk(block(x), f"block{k}.layer.{i}")
            out[f"stage{k}_pre"] = x
        out["stage3_bn"] = b = self.bn1(x)
        out["stage3"] = x = walk(F.relu(b), "relu")
        out["pool"] = x = walk(_global_pool(x), "flatten")
        out["logits"] = self.classifier(x)
        return out
