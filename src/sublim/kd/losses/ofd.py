"""OFD (Heo et al. ICCV 2019, "A Comprehensive Overhaul of Feature Distillation"): the student's
pre-ReLU features, through a connector, match the teacher's under a partial L2 that ignores
teacher responses below a per-channel margin."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Distiller,
    DistillerConfigError,
    Shapes,
    Taps,
    _pair_taps,
    _preact_taps,
    _shape,
    _tap,
)


@torch.no_grad()
def ofd_margin(gamma: Tensor, beta: Tensor) -> Tensor:
    """Per-channel margin of a BatchNorm that feeds a ReLU, shape (1, C, 1, 1), float32.

    The BN output of channel c is taken as N(beta_c, gamma_c^2); the margin is the mean of its
    negative part, E[x | x < 0] = m - s phi(m/s) / Phi(-m/s) with s = |gamma|, m = beta, or -3s
    where Phi(-m/s) <= 1e-3 (mdistiller's rule, computed in float64 and stored in float32 as
    there). A channel with gamma = 0 (a constant beta) gets min(beta, 0)."""
    s = gamma.detach().double().abs().flatten()
    m = beta.detach().double().flatten()
    z = m / torch.where(s > 0, s, 1.0)
    cdf = torch.special.ndtr(-z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    truncated = m - s * pdf / torch.where(cdf > 0, cdf, 1.0)
    margin = torch.where(cdf > 1e-3, truncated, -3.0 * s)
    margin = torch.where(s > 0, margin, m.clamp(max=0.0))
    return margin.float().view(1, -1, 1, 1).cpu()


def ofd_feat_loss(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 between [B, C, H, W] maps, summed over C, H, W and averaged over B.

    (S - M)^2 where S > M >= T (the student should not exceed the margin where the teacher is
    below it), (S - T)^2 where S > T and M < T <= 0, and (S - T)^2 wherever T > 0; nothing
    elsewhere. `target` (the teacher) and `margin` (1, C, 1, 1) receive no gradient."""
    target = target.detach()
    m = margin.to(source.dtype)
    with torch.no_grad():
        below = (source > m) & (target <= m)
        between = (source > target) & (target > m) & (target <= 0)
        positive = target > 0
    zero = source.new_zeros(())
    loss = torch.where(below, (source - m) ** 2, zero)
    loss = loss + torch.where(between, (source - target) ** 2, zero)
    loss = loss + torch.where(positive, (source - target) ** 2, zero)
    return loss.sum() / source.shape[0]


def _connector(s_c: int, t_c: int, kernel: int) -> nn.Sequential:
    """Conv k x k (no bias, N(0, sqrt(2 / (k^2 t_c))) weights) then BN: student -> teacher."""
    conv = nn.Conv2d(s_c, t_c, kernel, padding=(kernel - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel * kernel * t_c)))
    return nn.Sequential(conv, nn.BatchNorm2d(t_c))


class OFD(Distiller):
    """Overhaul of feature distillation, as mdistiller codes it (`distillers/OFD.py`).

    Reference: Heo et al., ICCV 2019, "A Comprehensive Overhaul of Feature Distillation".
    For each stage i of n, S_i = connector_i(student pre-ReLU feature), T_i = the teacher's
    pre-ReLU feature adaptive-average-pooled to S_i's size, M_i the margins of the teacher BN
    before that ReLU (`ofd_margin`), and L = weight * sum_i ofd_feat_loss(S_i, T_i, M_i) /
    2^(n-1-i) (the deepest stage weighs 1). Taps: each model's pre-activation features
    (`TapNet.preact_taps`: RepDistiller's preact=True feat[1:-1]); both lists keep their last
    min(len) entries, as mdistiller aligns them. Connector: conv1x1 (no bias) + BN per stage.

    The margins need the trained teacher model, not only its shapes: the training loop calls
    `bind_teacher(teacher)`, which reads each teacher tap's BN from `TapNet.preact_bns`. They
    are buffers, saved with the distiller's state.

    Defaults from mdistiller's CIFAR-100 config: weight 1e-3 (1e-4 on ImageNet), CE weight 1,
    kernel 1, and the teacher kept in train mode (mdistiller's OFD overrides `train()`, so the
    teacher's BNs use batch statistics; its forward stays gradient-free); `teacher_mode="eval"`
    runs it on its running statistics instead. In train mode the teacher's running statistics
    drift but nothing reads them, so a resumed run (whose teacher restarts from its checkpoint)
    equals an uninterrupted one; a teacher with Dropout (vgg*_bn) would drop out too.
    Connectors are built from the tap shapes, so every pair works; mdistiller builds them from
    hard-coded stage-channel lists and fails on vgg13/resnet50 -> MobileNetV2, resnet50 -> vgg8
    and the ShuffleNetV1 students, and takes margins from the first BNs of the teacher's list
    even when the aligned taps are its last ones (here each margin is its own tap's).
    """

    name = "ofd"
    default_weight = 1e-3
    ce_weight = 1.0
    param_help: ClassVar[dict[str, str]] = {
        "connector_kernel": "kernel size of each connector's conv (odd; 1: mdistiller's "
        "CONNECTOR.KERNEL_SIZE)",
        "teacher_mode": "the teacher's mode while the student trains: train (BN batch "
        "statistics, as mdistiller runs OFD) or eval (its running statistics)",
        "student_taps": "the student's pre-activation taps, paired in order with teacher_taps; "
        "None: its `preact_taps`, the last min(len) of both lists as mdistiller aligns them",
        "teacher_taps": "the teacher's, each a pre-activation tap with a BatchNorm before it "
        "(`preact_bns`; e.g. mdistiller's ResNet50 -> MobileNetV1 reads MobileNetV1's last "
        "three stages); None: its `preact_taps`",
        "weight": "loss weight of the summed stage losses; None: 1e-3, mdistiller's CIFAR "
        "FEAT_WEIGHT (1e-4 on ImageNet)",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        connector_kernel: int = 1,
        teacher_mode: Literal["train", "eval"] = "train",
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        if connector_kernel < 1 or connector_kernel % 2 == 0:
            raise DistillerConfigError("connector_kernel", connector_kernel, "an odd integer >= 1")
        if teacher_mode not in ("train", "eval"):
            raise DistillerConfigError("teacher_mode", teacher_mode, "train or eval")
        self.teacher_mode = teacher_mode
        if (student_taps is None) != (teacher_taps is None):
            raise DistillerConfigError(
                "teacher_taps", teacher_taps, "give student_taps and teacher_taps together"
            )
        if student_taps is None or teacher_taps is None:
            s_taps = _preact_taps(s_shapes, "student", "student_taps")
            t_taps = _preact_taps(t_shapes, "teacher", "teacher_taps")
            n = min(len(s_taps), len(t_taps))
            self.student_taps, self.teacher_taps = tuple(s_taps[-n:]), tuple(t_taps[-n:])
        else:
            self.student_taps, self.teacher_taps = _pair_taps(
                s_shapes, t_shapes, student_taps, teacher_taps
            )
        s_ch = [_shape(s_shapes, k, "student", "student", 3)[0] for k in self.student_taps]
        t_ch = [_shape(t_shapes, k, "teacher", "teacher", 3)[0] for k in self.teacher_taps]
        self.connectors = nn.ModuleList(
            _connector(s, t, connector_kernel) for s, t in zip(s_ch, t_ch, strict=True)
        )
        for i, c in enumerate(t_ch):  # set by bind_teacher (or a saved state)
            self.register_buffer(f"margin{i}", torch.zeros(1, c, 1, 1))
        self.bound = False

    def margins(self) -> list[Tensor]:
        """The per-stage margins (1, C_t, 1, 1), shallowest first."""
        return [getattr(self, f"margin{i}") for i in range(len(self.connectors))]

    def set_margins(self, margins: list[Tensor]) -> None:
        """Store the stages' margins (shallowest first), each C_t values."""
        for buf, m in zip(self.margins(), margins, strict=True):
            buf.copy_(m.detach().reshape(buf.shape))
        self.bound = True

    def bind_teacher(self, teacher: nn.Module) -> None:
        """Margins from the teacher BN before each teacher tap (`TapNet.preact_bns`)."""
        try:
            bns: Mapping[str, nn.Module] = teacher.preact_bns()  # type: ignore[operator]
        except NotImplementedError as e:
            raise DistillerConfigError("teacher", type(teacher).__name__, str(e)) from None
        missing = [k for k in self.teacher_taps if k not in bns]
        if missing:
            raise DistillerConfigError(
                "teacher",
                type(teacher).__name__,
                f"OFD needs the BN before each pre-activation tap; none for {missing}",
            )
        with torch.no_grad():
            self.set_margins([ofd_margin(bns[k].weight, bns[k].bias) for k in self.teacher_taps])

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        if not self.bound:
            raise RuntimeError("OFD's margins are unset: call bind_teacher(teacher) first")
        n = len(self.connectors)
        total = None
        for i, (conn, margin) in enumerate(zip(self.connectors, self.margins(), strict=True)):
            src = conn(_tap(s, self.student_taps[i], "student"))
            tgt = _tap(t, self.teacher_taps[i], "teacher").detach()
            if tgt.shape[-2:] != src.shape[-2:]:
                tgt = F.adaptive_avg_pool2d(tgt, src.shape[-2:])
            wide = torch.promote_types(src.dtype, torch.float32)  # fp16 sums overflow
            term = ofd_feat_loss(src.to(wide), tgt.to(wide), margin) / 2 ** (n - 1 - i)
            total = term if total is None else total + term
        assert total is not None
        return {"ofd": self.weight * total}

    def _load_from_state_dict(
        self, state_dict: Mapping[str, Tensor], prefix: str, *args: object, **kwargs: object
    ) -> None:
        """Margins loaded from a saved state count as bound."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[arg-type]
        if all(f"{prefix}margin{i}" in state_dict for i in range(len(self.connectors))):
            self.bound = True
