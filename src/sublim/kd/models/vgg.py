"""VGG with batch norm (RepDistiller vgg.py, the `_bn` variants): five conv blocks, no FC stack.

Taps: stem (block0 after ReLU), stage1_pre, stage1, ..., stage4_pre, stage4, pool. Block K >= 1
runs on the max-pooled previous output; "stageK_pre" is its last BN output and "stageK" its ReLU.
As in RepDistiller, the max pool after block 3 is applied only for 64x64 inputs, so at 32x32
stages 3 and 4 are both 4x4.

Generalized layers: every conv's ReLU, named by its position in its block ("blockK.2", ...; the
block's last ReLU, applied by the forward, gets the index it would have: "blockK.<len(block)>"),
then "flatten": 6 for vgg8, 11 for vgg13.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .base import TapNet, Walk, _global_pool, _no_walk

VGG_CFGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),  # RepDistiller cfg "S"
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),  # cfg "B"
}


def _vgg_block(widths: Sequence[int], in_channels: int) -> nn.Sequential:
    """Conv3x3(bias)-BN-ReLU per width, without the last ReLU (the forward applies it)."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        in_channels = w
    return nn.Sequential(*layers[:-1])


class VGG(TapNet):
    """VGG-BN for 32x32 (or 64x64) inputs; `cfg` gives each of the five blocks' conv widths."""

    tap_names = (
        "stem",
        "stage1_pre",
        "stage1",
        "stage2_pre",
        "stage2",
        "stage3_pre",
        "stage3",
        "stage4_pre",
        "stage4",
        "pool",
    )
    linear_init = "normal"
    feature_taps = ("stage1", "stage2", "stage3", "stage4")  # RepDistiller: after the ReLU
    preact_taps = ("stage1_pre", "stage2_pre", "stage3_pre", "stage4_pre")  # the BN outputs

    def __init__(self, cfg: Sequence[Sequence[int]], num_classes: int = 100) -> None:
        super().__init__()
        in_channels = [3] + [widths[-1] for widths in cfg[:-1]]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _vgg_block(w, c) for w, c in zip(cfg, in_channels, strict=True)
        )
        self.pool0, self.pool1, self.pool2, self.pool3 = (nn.MaxPool2d(2, 2) for _ in range(4))
        self.classifier = nn.Linear(cfg[-1][-1], num_classes)
        self.reset_parameters()

    def preact_bns(self) -> dict[str, nn.BatchNorm2d]:
        """Per preact tap, the BN that forms it: block K's last layer (mdistiller's
        get_bn_before_relu)."""
        blocks = (self.block1, self.block2, self.block3, self.block4)
        return {f"stage{k}_pre": b[-1] for k, b in enumerate(blocks, start=1)}

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        pool3 = self.pool3 if x.shape[2] == 64 else None  # RepDistiller's `if h == 64`
        out = {}
        stages = (
            (None, self.block0),
            (self.pool0, self.block1),
            (self.pool1, self.block2),
            (self.pool2, self.block3),
            (pool3, self.block4),
        )
        for k, (pool, block) in enumerate(stages):
            if pool is not None:
                x = pool(x)
            for i, layer in enumerate(block):
                x = layer(x)
                if isinstance(layer, nn.ReLU):
                    x = walk(x, f"block{k}.{i}")
            name = "stem" if k == 0 else f"stage{k}"
            if k:
                out[f"{name}_pre"] = x
            out[name] = x = F.relu(x)
            x = walk(x, f"block{k}.{len(block)}")
        out["pool"] = x = walk(_global_pool(x), "flatten")
        out["logits"] = self.classifier(x)
        return out
