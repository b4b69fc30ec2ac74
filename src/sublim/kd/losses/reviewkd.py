"""ReviewKD (Chen et al. CVPR 2021, "Distilling Knowledge via Knowledge Review"): the student's
features, fused deep to shallow by attention-based fusion (ABF) modules, match the teacher's
pre-activation features under a hierarchical context loss (HCL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Distiller,
    DistillerConfigError,
    Shapes,
    Taps,
    _feature_taps,
    _preact_taps,
    _shape,
    _tap,
)


def hcl_loss(fs: Sequence[Tensor], ft: Sequence[Tensor]) -> Tensor:
    """Hierarchical context loss summed over levels: per level, the MSE of the maps plus, for
    each p in (4, 2, 1) smaller than the map's height, the MSE of both maps average-pooled to
    p x p with weights 1/2, 1/4, 1/8, all divided by the sum of the weights used."""
    total = None
    for s, t in zip(fs, ft, strict=True):
        t = t.detach()
        level = F.mse_loss(s, t)
        c = tot = 1.0
        for p in (4, 2, 1):
            if p >= s.shape[-2]:
                continue
            c /= 2.0
            level = level + c * F.mse_loss(F.adaptive_avg_pool2d(s, p), F.adaptive_avg_pool2d(t, p))
            tot += c
        level = level / tot
        total = level if total is None else total + level
    assert total is not None
    return total


class ABF(nn.Module):
    """Attention-based fusion: this level's student map and the fused map from the deeper level.

    conv1 (1x1 to `mid`, BN) on the student map; with `fuse`, the deeper residual is
    nearest-upsampled to it and the two are mixed by a two-channel sigmoid attention (1x1 conv
    on their concatenation, with bias); the result is nearest-upsampled to the teacher's size,
    then conv2 (3x3, BN) gives the level's output. Returns (output, residual for the next,
    shallower level). conv1 and conv2 weights: kaiming_uniform(a=1), as the authors'."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: Tensor, residual: Tensor | None, out_hw: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att is not None:
            assert residual is not None
            y = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            z = self.att(torch.cat([x, y], dim=1))
            x = x * z[:, :1] + y * z[:, 1:2]
        if tuple(x.shape[-2:]) != out_hw:
            x = F.interpolate(x, size=out_hw, mode="nearest")
        return self.conv2(x), x


def _hw(shape: Sequence[int]) -> tuple[int, int]:
    """A tap's spatial size; a flat (D,) vector counts as 1 x 1."""
    return (int(shape[1]), int(shape[2])) if len(shape) == 3 else (1, 1)


class ReviewKD(Distiller):
    """Knowledge review, as mdistiller codes it (`distillers/ReviewKD.py`, the same module as
    the authors' `CIFAR-100/model/reviewkd.py`).

    Reference: Chen et al., CVPR 2021, "Distilling Knowledge via Knowledge Review". Levels,
    shallow to deep: the student's benchmark features (`TapNet.feature_taps`, or its
    pre-activation taps with `stu_preact`) and its pooled vector as a 1x1 map; the teacher's
    pre-activation taps and pooled vector. Both lists keep their last min(len) entries. One ABF
    per level, run deepest first (the pooled level without fusion), each upsampling to its
    teacher level's size; L = weight * warm-up * HCL(outputs, teacher levels), plus CE.
    Channels and sizes come from the tap shapes; for the benchmark pairs they reproduce the
    authors' `build_review_kd` tables. The ABFs' middle width is min(max_mid_channels, pooled
    dim): mdistiller's min(512, .) (it reads MAX_MID_CHANNEL but never uses it; the authors'
    ImageNet MobileNetV1 uses 256).

    Defaults from mdistiller's CIFAR-100 config: weight 5, warm-up 20 epochs, CE weight 1,
    student features post-ReLU, teacher in eval mode. Per-pair weights of the authors'
    script: 0.6 resnet56 -> resnet20, 1.0 resnet110 -> resnet32, 8.0 resnet32x4 -> shufflev2,
    5.0 for the other pairs it lists (sweep specs set `weight` per pair). The warm-up factor is
    min(epoch / warmup_epochs, 1) with epochs counted from `warmup_from`: 1 as mdistiller (the
    first epoch, our 0-based 0, gets 1/20), 0 as the authors' code (the first epoch gets none).
    The published ReviewKD numbers come from the authors' recipe, not mdistiller's: LR 0.1
    (0.02 for ShuffleNet/MobileNet students), batch 128, Nesterov SGD, CIFAR-10 mean/std,
    warm-up from 0, and the teacher never switched to eval mode (`teacher_mode="train"`).
    """

    name = "reviewkd"
    default_weight = 5.0
    ce_weight = 1.0
    param_help: ClassVar[dict[str, str]] = {
        "stu_preact": "read the student's pre-activation taps instead of its post-ReLU "
        "features (false: mdistiller's CIFAR STU_PREACT; true on ImageNet)",
        "max_mid_channels": "cap on the ABFs' middle width min(cap, pooled dim) (512: "
        "mdistiller, which ignores its MAX_MID_CHANNEL; 256: the authors' ImageNet MobileNetV1)",
        "warmup_epochs": "epochs over which the loss ramps up linearly, min(epoch / "
        "warmup_epochs, 1); 0: no warm-up (20: mdistiller's and the authors' value)",
        "warmup_from": "the number of the first epoch in the warm-up factor: 1 as mdistiller "
        "(first epoch 1/20), 0 as the authors' code (first epoch without the loss)",
        "teacher_mode": "the teacher's mode while the student trains: eval (mdistiller) or "
        "train (BN batch statistics, as the authors' code leaves it)",
        "weight": "loss weight of the HCL; None: 5, mdistiller's CIFAR REVIEWKD_WEIGHT (the "
        "authors' script: 0.6 res56->res20, 1.0 res110->res32, 8.0 res32x4->shufflev2)",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        stu_preact: bool = False,
        max_mid_channels: int = 512,
        warmup_epochs: int = 20,
        warmup_from: Literal[1, 0] = 1,
        teacher_mode: Literal["eval", "train"] = "eval",
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        if max_mid_channels < 1:
            raise DistillerConfigError("max_mid_channels", max_mid_channels, "an integer >= 1")
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise DistillerConfigError("warmup_epochs", warmup_epochs, "an integer >= 0")
        if warmup_from not in (0, 1):
            raise DistillerConfigError("warmup_from", warmup_from, "1 or 0")
        if teacher_mode not in ("train", "eval"):
            raise DistillerConfigError("teacher_mode", teacher_mode, "eval or train")
        self.warmup_epochs, self.warmup_from = int(warmup_epochs), int(warmup_from)
        self.teacher_mode = teacher_mode
        if stu_preact:
            s_feats = _preact_taps(s_shapes, "student", "stu_preact")
        else:
            s_feats = _feature_taps(s_shapes)
        s_taps = [*s_feats, "pool"]
        t_taps = [*_preact_taps(t_shapes, "teacher", "teacher"), "pool"]
        n = min(len(s_taps), len(t_taps))
        self.student_taps, self.teacher_taps = tuple(s_taps[-n:]), tuple(t_taps[-n:])
        s_sh = [_shape(s_shapes, k, "student", "student", None) for k in self.student_taps]
        t_sh = [_shape(t_shapes, k, "teacher", "teacher", None) for k in self.teacher_taps]
        for side, taps, shapes in (("student", s_taps, s_sh), ("teacher", t_taps, t_sh)):
            if len(shapes[-1]) != 1 or any(len(x) != 3 for x in shapes[:-1]):
                raise DistillerConfigError(
                    side, taps, "needs (C, H, W) feature maps and a (D,) 'pool' vector"
                )
        mid = min(int(max_mid_channels), s_sh[-1][0])
        # deepest (pooled) level first, the order they run in
        self.abfs = nn.ModuleList(
            ABF(s[0], mid, t[0], fuse=i > 0)
            for i, (s, t) in enumerate(zip(reversed(s_sh), reversed(t_sh), strict=True))
        )
        self.out_hw = [_hw(t) for t in reversed(t_sh)]

    def warmup_factor(self, epoch: int) -> float:
        """min((epoch + warmup_from) / warmup_epochs, 1) for our 0-based `epoch`."""
        if self.warmup_epochs == 0:
            return 1.0
        return min((epoch + self.warmup_from) / self.warmup_epochs, 1.0)

    def review(self, s: Taps) -> list[Tensor]:
        """The ABF outputs, shallowest level first (the shapes of the teacher's levels)."""
        feats = [_tap(s, k, "student") for k in reversed(self.student_taps)]
        feats[0] = feats[0].reshape(*feats[0].shape, 1, 1)
        outs: list[Tensor] = []
        residual = None
        for x, abf, hw in zip(feats, self.abfs, self.out_hw, strict=True):
            out, residual = abf(x, residual, hw)
            outs.append(out)
        return outs[::-1]

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        factor = self.warmup_factor(epoch)
        outs = self.review(s)
        ts = [_tap(t, k, "teacher").detach() for k in self.teacher_taps]
        ts[-1] = ts[-1].reshape(*ts[-1].shape, 1, 1)
        return {"reviewkd": self.weight * factor * hcl_loss(outs, ts)}
