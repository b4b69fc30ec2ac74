"""Methods on the logits: KD (Hinton et al. 2015), logit standardisation (Sun et al. 2024), DKD
(Zhao et al. 2022)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    Distiller,
    DistillerConfigError,
    Shapes,
    Taps,
    _kl_softened,
    _non_negative,
    _positive,
    _shape,
    _tap,
)

# ---------------------------------------------------------------------------------------------
# KD (Hinton et al. 2015)
# ---------------------------------------------------------------------------------------------


class _LogitDistiller(Distiller):
    """Base for methods on the logits: validates that both sides have K-way logits."""

    def __init__(self, s_shapes: Shapes, t_shapes: Shapes, *, weight: float | None = None) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        (ks,) = _shape(s_shapes, "logits", "student", "logits", 1)
        (kt,) = _shape(t_shapes, "logits", "teacher", "logits", 1)
        if ks != kt:
            raise DistillerConfigError(
                "logits", (ks, kt), "student and teacher must have the same number of classes"
            )
        self.num_classes = ks
        self.student_taps = ("logits",)
        self.teacher_taps = ("logits",)


class KD(_LogitDistiller):
    """Knowledge distillation on softened logits.

    Reference: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network":
    L = T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes, averaged over the
    batch (RepDistiller's DistillKL). Defaults from RepDistiller's CIFAR-100 recipe: T = 4,
    loss weight 0.9 with cross-entropy weight 0.1 (`-r 0.1 -a 0.9`).
    """

    name = "kd"
    default_weight = 0.9
    ce_weight = 0.1
    param_help: ClassVar[dict[str, str]] = {
        "temperature": "softening temperature T of both softmaxes; the KL is multiplied by T^2 "
        "(4: RepDistiller's CIFAR-100 value)",
        "weight": "loss weight of the KD term; None: 0.9, RepDistiller's `-a 0.9` (with "
        "cross-entropy weight 0.1), or 1 when the experiment sets `alpha`",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        temperature: float = 4.0,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        self.temperature = _positive("temperature", temperature)

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        z_t = _tap(t, "logits", "teacher").detach()
        loss = _kl_softened(_tap(s, "logits", "student"), z_t, self.temperature)
        return {"kd": self.weight * loss}


class KDDOT(KD):
    """Hinton KD optimised by DOT, the distillation-oriented trainer.

    Reference: Zhao et al. 2023, "DOT: A Distillation-Oriented Trainer" (ICCV), mdistiller's
    engine/dot.py: the KD loss and the cross-entropy are back-propagated separately and SGD keeps
    one momentum buffer per loss, 0.9 + delta for KD and 0.9 - delta for the task (`kd.dot.DOT`).
    The losses are KD's (T = 4, weight 0.9, cross-entropy 0.1: mdistiller's KD config with
    trainer dot); delta 0.075 is its CIFAR-100 and Tiny-ImageNet value, 0.09 its ImageNet one.
    """

    name = "kd_dot"
    param_help: ClassVar[dict[str, str]] = {
        **KD.param_help,
        "delta": "momentum split: KD's gradient gets momentum m + delta, cross-entropy's "
        "m - delta, m the recipe's --momentum (0.075: mdistiller's CIFAR-100 value; 0.09 on "
        "ImageNet)",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        temperature: float = 4.0,
        delta: float = 0.075,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, temperature=temperature, weight=weight)
        if not 0.0 <= delta < 1.0:
            raise DistillerConfigError("delta", delta, "a momentum split in [0, 1)")
        self.dot_delta = float(delta)


# ---------------------------------------------------------------------------------------------
# Logit standardisation (Sun et al. CVPR 2024)
# ---------------------------------------------------------------------------------------------


def zscore(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample z-score of logits: (z - mean(z)) / (eps + std(z)), std with Bessel's correction
    as in the authors' code (`logit.std(dim=-1)`)."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (eps + std)


class LogitStd(_LogitDistiller):
    """KD on z-scored logits.

    Reference: Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation",
    Algorithm 1: q(z) = softmax(Z(z) / tau) with Z the per-sample z-score, for teacher and
    student, then KD as above (times tau^2). Defaults from the authors' code and README
    (`--logit-stand --base-temp 2 --kd-weight 9`): base temperature 2, KD weight 9, and the CE
    weight 0.1 of their current config (`CFG.KD.LOSS.CE_WEIGHT` in mdistiller/engine/cfg.py;
    1.0 before March 2024). Z(z) = (z - mean) / (eps + std) with eps = 1e-7 as in their
    `normalize`; the std uses Bessel's correction (torch's default, as in their code); the paper
    writes the population std, a factor sqrt(K / (K - 1)) apart.

    The KD_wo_CE paper's VKDNormalized is the same loss with temperature 4, eps 1e-6 and CE
    weight 1 (the experiment's `ce_weight`); its loss weight 16 multiplies a KL without the T^2
    factor that this loss already contains, so here weight = 16 / T^2 = 1.
    """

    name = "logit_std"
    default_weight = 9.0
    ce_weight = 0.1
    param_help: ClassVar[dict[str, str]] = {
        "temperature": "base temperature tau dividing the z-scored logits; the KL is multiplied "
        "by tau^2 (2: the authors' `--base-temp 2`; 4 in KD_wo_CE's VKDNormalized)",
        "eps": "added to the per-sample standard deviation in the z-score (z - mean) / (eps + "
        "std) (1e-7: the authors' `normalize`; 1e-6 in KD_wo_CE)",
        "weight": "loss weight of the KD term on z-scored logits; None: 9, the authors' "
        "`--kd-weight 9` (with cross-entropy weight 0.1), or 1 when the experiment sets `alpha`",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        temperature: float = 2.0,
        eps: float = 1e-7,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        if self.num_classes < 2:
            raise DistillerConfigError("logits", self.num_classes, "z-scores need >= 2 classes")
        self.temperature = _positive("temperature", temperature)
        self.eps = _non_negative("eps", eps)

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        with torch.no_grad():
            z_t = zscore(_tap(t, "logits", "teacher").detach(), self.eps)
        z_s = zscore(_tap(s, "logits", "student"), self.eps)
        return {"logit_std": self.weight * _kl_softened(z_s, z_t, self.temperature)}


# ---------------------------------------------------------------------------------------------
# DKD (Zhao et al. CVPR 2022)
# ---------------------------------------------------------------------------------------------


class DKD(_LogitDistiller):
    """Decoupled knowledge distillation: target-class (TCKD) and non-target-class (NCKD) terms.

    Reference: Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation", eq. (7):
    DKD = alpha * TCKD + beta * NCKD, where TCKD = KL(b_t || b_s) on the binary probabilities
    (target, all non-targets) and NCKD = KL(p~_t || p~_s) among the non-target classes; both on
    softmax(z / T) and times T^2, as in mdistiller's `dkd_loss` (non-target softmax with the
    target logit shifted by -1000). Defaults from mdistiller's CIFAR-100 config: alpha = 1,
    beta = 8, T = 4, CE weight 1, and the loss ramped linearly over the first 20 epochs.
    Beta is tuned per pair there (configs/cifar100/dkd/*.yaml): 2 for resnet56 -> resnet20 and
    resnet110 -> resnet32; 6 for wrn_40_2 -> wrn_16_2, wrn_40_2 -> wrn_40_1, vgg13 -> vgg8 and
    vgg13 -> MobileNetV2; the default 8 for resnet32x4 -> resnet8x4 and the ShuffleNet and
    ResNet50 pairs. Sweep specs set it per pair (`[[pairs]]`, see `kd.sweep`).

    mdistiller counts epochs from 1 and scales by min(epoch / warmup, 1); `epoch` here is the
    0-based epoch index, so the factor is min((epoch + 1) / warmup, 1): the first epoch gets
    1/20 and the 20th (index 19) and later get the full loss, the same schedule.
    """

    name = "dkd"
    default_weight = 1.0
    ce_weight = 1.0
    param_help: ClassVar[dict[str, str]] = {
        "alpha": "weight of the target-class term TCKD (1: mdistiller's CIFAR-100 config)",
        "beta": "weight of the non-target-class term NCKD (8: mdistiller's default; its "
        "per-pair configs use 2 or 6 for some pairs, see above)",
        "temperature": "softening temperature T of both terms, each multiplied by T^2 (4: "
        "mdistiller's value)",
        "warmup_epochs": "epochs over which the loss ramps up linearly, min((epoch + 1) / "
        "warmup_epochs, 1) for the 0-based epoch; 0: no warm-up (20: mdistiller's value)",
        "weight": "overall weight multiplying both TCKD and NCKD; None: 1 (mdistiller's DKD "
        "has only alpha and beta)",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        if self.num_classes < 2:
            raise DistillerConfigError("logits", self.num_classes, "DKD needs >= 2 classes")
        self.alpha = _non_negative("alpha", alpha)
        self.beta = _non_negative("beta", beta)
        self.temperature = _positive("temperature", temperature)
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise DistillerConfigError("warmup_epochs", warmup_epochs, "an integer >= 0")
        self.warmup_epochs = int(warmup_epochs)

    def warmup_factor(self, epoch: int) -> float:
        """min((epoch + 1) / warmup_epochs, 1) for the 0-based `epoch`; 1 without warm-up."""
        if self.warmup_epochs == 0:
            return 1.0
        return min((epoch + 1) / self.warmup_epochs, 1.0)

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        T = self.temperature
        z_s = _tap(s, "logits", "student") / T
        z_t = _tap(t, "logits", "teacher").detach() / T
        gt = F.one_hot(targets.long(), self.num_classes).to(torch.bool)
        batch = z_s.shape[0]

        # TCKD: binary (target, non-target) distributions. The student's log-probabilities are
        # computed with logsumexp so a saturated softmax cannot produce log(0).
        lse_s = torch.logsumexp(z_s, dim=1)
        log_b_s = torch.stack(
            [
                z_s.masked_fill(~gt, float("-inf")).logsumexp(dim=1) - lse_s,
                z_s.masked_fill(gt, float("-inf")).logsumexp(dim=1) - lse_s,
            ],
            dim=1,
        )
        with torch.no_grad():
            p_t = F.softmax(z_t, dim=1)
            b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], dim=1)
        tckd = F.kl_div(log_b_s, b_t, reduction="sum") * T**2 / batch

        # NCKD: distributions over the non-target classes (target logit shifted by -1000).
        shift = 1000.0 * gt.to(z_s.dtype)
        with torch.no_grad():
            p_t_nt = F.softmax(z_t - shift, dim=1)
        log_p_s_nt = F.log_softmax(z_s - shift, dim=1)
        nckd = F.kl_div(log_p_s_nt, p_t_nt, reduction="sum") * T**2 / batch

        scale = self.weight * self.warmup_factor(epoch)
        return {"dkd_tckd": scale * self.alpha * tckd, "dkd_nckd": scale * self.beta * nckd}
