"""mdistiller's ImageNet MobileNetV1 (models/imagenet/mobilenetv1.py), registered as "mobilenetv1".

`model` is a Sequential of 14 blocks with mdistiller's indices (so its state dict loads after
renaming `fc.` to `classifier.`): block 0 is conv3x3(3 -> 32, stride 2)-BN-ReLU; blocks 1..13
are depthwise-separable (dw3x3 (stride)-BN-ReLU, pw1x1-BN-ReLU) with (out, stride) = (64, 1)
(128, 2) (128, 1) (256, 2) (256, 1) (512, 2) 5 x (512, 1) (1024, 2) (1024, 1); then a global
average pool (mdistiller's AvgPool2d(7), equal at 224 px) and the classifier (1024 -> classes;
mdistiller fixes 1000). 4,231,976 parameters at 1000 classes.

Taps: "stem" (block 0's ReLU, 32@112 at 224 px); "stageK_pre" = the pre-ReLU output (pointwise
BN) of blocks 3, 5, 11, 13 (mdistiller's preact_feats: 128@56, 256@28, 512@14, 1024@7) and
"stageK" its ReLU (mdistiller's feats); "pool" (1024). `preact_bns()` = those four pointwise BNs
(mdistiller's get_bn_before_relu).

mdistiller's feature lists for this model have no stem entry, so where its distillers read
`feats[1:]` / `preact_feats[1:]` (AT, OFD) they drop stage1 here (AT then pairs this model's
stage2..4 with a ResNet teacher's stage1..3); ReviewKD reads all four. `feature_taps` and
`preact_taps` are the four stages; a method reproducing that quirk names its taps.

Generalized layers (28): every ReLU, "model.i.2" (and "model.i.5" in blocks 1..13), "flatten".
Init: PyTorch's defaults (mdistiller sets none).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import TapNet, Walk, _global_pool, _no_walk

# (out_channels, stride) of the 13 depthwise-separable blocks
BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *((512, 1),) * 5,
    (1024, 2),
    (1024, 1),
)
TAP_BLOCKS = {3: 1, 5: 2, 11: 3, 13: 4}  # block index in `model` -> stage of its tap


def _conv_bn(inp: int, out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()
    )


def _conv_dw(inp: int, out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(),
        nn.Conv2d(inp, out, 1, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(),
    )


class MobileNetV1(TapNet):
    """MobileNetV1 x1.0 for 224 px inputs (any size >= 32 px runs)."""

    tap_names = (
        "stem",
        *(f"stage{k}{s}" for k in range(1, 5) for s in ("_pre", "")),
        "pool",
    )
    feature_taps = ("stage1", "stage2", "stage3", "stage4")
    preact_taps = ("stage1_pre", "stage2_pre", "stage3_pre", "stage4_pre")

    def __init__(self, num_classes: int = 1000, image_size: int = 224) -> None:
        super().__init__()
        blocks, inp = [_conv_bn(3, 32, 2)], 32
        for out, stride in BLOCKS:
            blocks.append(_conv_dw(inp, out, stride))
            inp = out
        self.model = nn.Sequential(*blocks)
        self.classifier = nn.Linear(1024, num_classes)  # mdistiller's `fc`
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default init of every conv, BN and Linear, drawn from `generator`."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(m.weight[0].numel())  # 1 / sqrt(fan_in)
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def preact_bns(self) -> dict[str, nn.BatchNorm2d]:
        """Per preact tap, the pointwise BN that outputs it (mdistiller's get_bn_before_relu)."""
        return {f"stage{k}_pre": self.model[i][4] for i, k in TAP_BLOCKS.items()}

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for i, block in enumerate(self.model):
            for j, layer in enumerate(block):
                if not isinstance(layer, nn.ReLU):
                    x = layer(x)
                    continue
                if i in TAP_BLOCKS and j == len(block) - 1:
                    out[f"stage{TAP_BLOCKS[i]}_pre"] = x
                x = F.relu(x)
                if i == 0:
                    out["stem"] = x
                elif i in TAP_BLOCKS and j == len(block) - 1:
                    out[f"stage{TAP_BLOCKS[i]}"] = x
                x = walk(x, f"model.{i}.{j}")
        out["pool"] = x = walk(_global_pool(x), "flatten")
        out["logits"] = self.classifier(x)
        return out
