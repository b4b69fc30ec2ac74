"""CIFAR-style classifiers with named feature taps, as in the standard CIFAR KD benchmark.

The definitions follow RepDistiller / CRD (Tian et al., also used by mdistiller) layer for layer:
same widths, strides, shortcuts and parameter counts, and the same initialisation. Module names
match RepDistiller's too, so a RepDistiller state dict loads after renaming its classifier keys
(`fc.` for ResNets and WRNs, `classifier.0.` for MobileNetV2) to `classifier.`.

Every model is a `TapNet`: `forward(x, taps)` returns a dict with "logits" and the requested
intermediate outputs ("taps"), named uniformly across families so that a distillation loss reads
a feature by name, never by position or channel count:

- "stem": output of the stem (after its ReLU where it has one),
- "stageK": output of stage K, post-activation (K = 1..3, or 1..4 for VGG and MobileNetV2),
- "stageK_pre": the same output before its final activation, where there is one,
- "pool": the flattened globally pooled feature the classifier reads, shape (D,),
- "logits".

Taps are references to tensors the forward computes anyway; requesting them costs nothing.

Departure from RepDistiller: pooling before the classifier is a global average pool. At 32x32 it
equals RepDistiller's fixed-size pools exactly; unlike them it also works for 64x64 inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MODEL_NAMES

__all__ = [
    "MODELS",
    "CifarResNet",
    "MobileNetV2",
    "TapNet",
    "VGG",
    "WideResNet",
    "create_model",
    "parameter_count",
]


# ------------------------------------------------------------------------------------------------
# Common interface
# ------------------------------------------------------------------------------------------------


class TapNet(nn.Module):
    """A classifier whose forward returns named intermediate outputs ("taps").

    Subclasses set `tap_names` (every tap except "logits", in forward order), own a `classifier`
    Linear, and implement `_forward_all`, which returns every tap and "logits".
    """

    tap_names: tuple[str, ...] = ()
    classifier: nn.Linear
    # How the classifier is initialised: "torch" (PyTorch's default), "torch_zero_bias" (default
    # weight, zero bias) or "normal" (N(0, 0.01) weight, zero bias); RepDistiller varies by family.
    linear_init: str = "torch"

    def _forward_all(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, taps: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Always returns "logits"; also every tap named in `taps` (None: all taps)."""
        if isinstance(taps, str):
            taps = (taps,)
        if taps is not None:
            unknown = [t for t in taps if t != "logits" and t not in self.tap_names]
            if unknown:
                raise ValueError(
                    f"{type(self).__name__} has no tap(s) {unknown}; "
                    f"taps: {', '.join(self.tap_names)}"
                )
        out = self._forward_all(x)
        if taps is None:
            return out
        return {"logits": out["logits"], **{t: out[t] for t in taps}}

    def tap_shapes(
        self, in_shape: tuple[int, int, int] = (3, 32, 32)
    ) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of every tap and of "logits", for inputs of shape `in_shape`.

        Runs one forward on the meta device with meta copies of the parameters and buffers, so it
        allocates no data and leaves the model (and its BatchNorm statistics) untouched.
        """
        meta = {
            name: torch.empty_like(t, device="meta")
            for name, t in (*self.named_parameters(), *self.named_buffers())
        }
        x = torch.zeros((2, *in_shape), device="meta")
        with torch.no_grad():
            out = torch.func.functional_call(self, meta, (x,))
        return {name: tuple(t.shape[1:]) for name, t in out.items()}

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise as RepDistiller does, drawing from `generator` (None: the global RNG).

        Convolutions: N(0, 2 / (k*k*out_channels)) (He, fan-out), biases zero; BatchNorm: weight
        1, bias 0, fresh running statistics; the classifier per `linear_init`.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out), generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, nn.Linear):
                if self.linear_init == "normal":
                    nn.init.normal_(m.weight, 0.0, 0.01, generator=generator)
                else:
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if self.linear_init == "torch":
                    bound = 1.0 / math.sqrt(m.in_features)
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
                else:
                    nn.init.zeros_(m.bias)


def _global_pool(x: Tensor) -> Tensor:
    """Global average pool to a flat (N, C) feature."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


# ------------------------------------------------------------------------------------------------
# CIFAR ResNets (RepDistiller resnet.py): post-activation BasicBlocks, 1x1 conv + BN shortcuts
# Taps: stem, stage1_pre, stage1, stage2_pre, stage2, stage3_pre, stage3, pool.
# "stageK_pre" is the last block's residual sum before its ReLU; stageK == relu(stageK_pre).
# ------------------------------------------------------------------------------------------------


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

    def _forward_all(self, x: Tensor) -> dict[str, Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        out = {"stem": x}
        for k, stage in enumerate((self.layer1, self.layer2, self.layer3), start=1):
            last = len(stage) - 1
            for i, block in enumerate(stage):
                if i < last:
                    x = block(x)
            pre = stage[last].preact(x)
            x = F.relu(pre)
            out[f"stage{k}_pre"] = pre
            out[f"stage{k}"] = x
        out["pool"] = _global_pool(x)
        out["logits"] = self.classifier(out["pool"])
        return out


# ------------------------------------------------------------------------------------------------
# Wide ResNets (RepDistiller wrn.py): pre-activation blocks, depth = 6n + 4, dropout 0
# Taps: stem (the first conv; no BN-ReLU), stage1_pre, stage1, ..., stage3_pre, stage3, pool.
# "stageK_pre" is the stage's raw residual sum (what RepDistiller returns with preact=False);
# "stageK" is relu(BN(stageK_pre)) with the BN that follows: the first BN of the next stage's
# first block (stages 1, 2) or the final BN (stage 3). Both are computed by every forward.
# ------------------------------------------------------------------------------------------------


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

    tap_names = CifarResNet.tap_names
    linear_init = "torch_zero_bias"

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

    def _forward_all(self, x: Tensor) -> dict[str, Tensor]:
        x = self.conv1(x)
        out = {"stem": x}
        for k, stage in enumerate((self.block1, self.block2, self.block3), start=1):
            first = stage.layer[0]
            a = first.activate(x)
            if k > 1:  # the previous stage's activated output is this stage's first activation
                out[f"stage{k - 1}"] = a
            x = first.forward_activated(x, a)
            for block in stage.layer[1:]:
                x = block(x)
            out[f"stage{k}_pre"] = x
        out["stage3"] = F.relu(self.bn1(x))
        out["pool"] = _global_pool(out["stage3"])
        out["logits"] = self.classifier(out["pool"])
        return out


# ------------------------------------------------------------------------------------------------
# VGG with batch norm (RepDistiller vgg.py, the `_bn` variants): five conv blocks, no FC stack
# Taps: stem (block0 after ReLU), stage1_pre, stage1, ..., stage4_pre, stage4, pool.
# Block K >= 1 runs on the max-pooled previous output; "stageK_pre" is its last BN output and
# "stageK" its ReLU. As in RepDistiller, the max pool after block 3 is applied only for 64x64 inputs,
# so at 32x32 stages 3 and 4 are both 4x4.
# ------------------------------------------------------------------------------------------------

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

    def __init__(self, cfg: Sequence[Sequence[int]], num_classes: int = 100) -> None:
        super().__init__()
        in_channels = [3] + [widths[-1] for widths in cfg[:-1]]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _vgg_block(w, c) for w, c in zip(cfg, in_channels, strict=True)
        )
        self.pool0, self.pool1, self.pool2, self.pool3 = (nn.MaxPool2d(2, 2) for _ in range(4))
        self.classifier = nn.Linear(cfg[-1][-1], num_classes)
        self.reset_parameters()

    def _forward_all(self, x: Tensor) -> dict[str, Tensor]:
        pool3 = self.pool3 if x.shape[2] == 64 else None  # RepDistiller's `if h == 64`
        x = F.relu(self.block0(x))
        out = {"stem": x}
        stages = (
            (self.pool0, self.block1),
            (self.pool1, self.block2),
            (self.pool2, self.block3),
            (pool3, self.block4),
        )
        for k, (pool, block) in enumerate(stages, start=1):
            pre = block(x if pool is None else pool(x))
            x = F.relu(pre)
            out[f"stage{k}_pre"] = pre
            out[f"stage{k}"] = x
        out["pool"] = _global_pool(x)
        out["logits"] = self.classifier(out["pool"])
        return out


# ------------------------------------------------------------------------------------------------
# MobileNetV2 for CIFAR (RepDistiller mobilenetv2.py, `mobile_half`: expansion 6, width 0.5)
# Taps: stem, stage1, stage2, stage3, stage4, pool. Stages group the seven inverted-residual
# groups as RepDistiller's features do: (0, 1), (2,), (3, 4), (5, 6). Blocks end in a linear
# bottleneck (BN, no ReLU), so there are no "_pre" taps. The stem has stride 2, so at 32x32 the
# stages are 16x16, 8x8, 4x4 and 2x2; "pool" is the 1280-channel 1x1 conv's output, pooled.
# ------------------------------------------------------------------------------------------------


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

    def _forward_all(self, x: Tensor) -> dict[str, Tensor]:
        x = self.conv1(x)
        out = {"stem": x}
        for k, group in enumerate(self.STAGE_GROUPS, start=1):
            for i in group:
                x = self.blocks[i](x)
            out[f"stage{k}"] = x
        out["pool"] = _global_pool(self.conv2(x))
        out["logits"] = self.classifier(out["pool"])
        return out


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------

_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)

MODELS: dict[str, Callable[[int], TapNet]] = {
    "resnet8": partial(CifarResNet, 8, _SMALL),
    "resnet14": partial(CifarResNet, 14, _SMALL),
    "resnet20": partial(CifarResNet, 20, _SMALL),
    "resnet32": partial(CifarResNet, 32, _SMALL),
    "resnet44": partial(CifarResNet, 44, _SMALL),
    "resnet56": partial(CifarResNet, 56, _SMALL),
    "resnet110": partial(CifarResNet, 110, _SMALL),
    # The experiment notes' "ResNet-112" (18 blocks per stage, 16/32/64 channels) is this same
    # network: 6 * 18 + 2 = 110 weighted layers. The alias keeps their name usable.
    "resnet112": partial(CifarResNet, 110, _SMALL),
    "resnet8x4": partial(CifarResNet, 8, _X4),
    "resnet32x4": partial(CifarResNet, 32, _X4),
    "wrn_16_2": partial(WideResNet, 16, 2),
    "wrn_40_1": partial(WideResNet, 40, 1),
    "wrn_40_2": partial(WideResNet, 40, 2),
    "vgg8": partial(VGG, VGG_CFGS["vgg8"]),
    "vgg13": partial(VGG, VGG_CFGS["vgg13"]),
    "mobilenetv2": partial(MobileNetV2, 6, 0.5),  # RepDistiller's `mobile_half`
}


if tuple(MODELS) != MODEL_NAMES:  # the config validates names without importing this module
    raise ImportError("kd.models.MODELS and kd.config.MODEL_NAMES disagree")


def create_model(
    name: str, num_classes: int = 100, *, generator: torch.Generator | None = None
) -> TapNet:
    """Build model `name` for `num_classes` classes with RepDistiller's initialisation.

    With a `generator`, every initial value is drawn from it and the global RNG is left alone
    (the modules are built on the meta device, then materialised and initialised).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(MODELS)}")
    if generator is None:
        return MODELS[name](num_classes)
    with torch.device("meta"):
        model = MODELS[name](num_classes)
    model.to_empty(device="cpu")
    model.reset_parameters(generator)
    return model


def parameter_count(model: nn.Module) -> int:
    """Number of parameter elements (trainable or not; shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())
