"""Methods on relations between samples or neurons: RKD (Park et al. 2019), NST (Huang & Wang
2017), similarity-preserving KD (Tung & Mori 2019)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    Distiller,
    Shapes,
    Taps,
    _last_feature,
    _match_spatial,
    _non_negative,
    _pair_taps,
    _shape,
    _tap,
)

# ---------------------------------------------------------------------------------------------
# RKD (Park et al. 2019)
# ---------------------------------------------------------------------------------------------


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix [B, B] with a zero diagonal (RepDistiller's RKDLoss.pdist)."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def triplet_cosines(e: Tensor) -> Tensor:
    """cos of the angle at vertex i between e_j and e_k, for all (i, j, k): [B, B, B].

    Entries with j == i or k == i (a zero difference vector) are 0, as in RepDistiller."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [i, j] = e_j - e_i
    return torch.bmm(diff, diff.transpose(1, 2))


class RKD(Distiller):
    """Relational knowledge distillation: distance-wise and angle-wise relations of embeddings.

    Reference: Park et al., CVPR 2019, "Relational Knowledge Distillation", eqs. (4)-(7):
    psi_D = ||t_i - t_j|| / mu with mu the mean distance over distinct pairs, and
    psi_A = cos angle(t_i, t_j, t_k) = <e_ij, e_kj>, each matched with the Huber (smooth L1,
    delta = 1) loss. As in the authors' code and RepDistiller, the Huber loss is averaged over
    all B^2 pairs and B^3 triplets (including the degenerate ones, which are 0 on both sides)
    rather than summed as in the paper. Weights 25 (distance) and 50 (angle), on "pool"
    (RepDistiller's feat[-1]); `weight` (default 1, `-b 1`) multiplies both.
    """

    name = "rkd"
    default_weight = 1.0
    ce_weight = 1.0
    param_help: ClassVar[dict[str, str]] = {
        "student_tap": "the student tap whose flattened per-sample output is the embedding "
        '("pool": the pooled feature, RepDistiller\'s feat[-1])',
        "teacher_tap": "the teacher tap whose flattened per-sample output is the embedding "
        '("pool", RepDistiller\'s feat[-1])',
        "distance_weight": "weight of the distance-wise Huber loss (25: the paper's and "
        "RepDistiller's value)",
        "angle_weight": "weight of the angle-wise Huber loss (50: the paper's and RepDistiller's "
        "value)",
        "weight": "overall weight multiplying both terms; None: 1, RepDistiller's `-b 1`",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_tap: str = "pool",
        teacher_tap: str = "pool",
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        _shape(s_shapes, student_tap, "student", "student_tap", None)
        _shape(t_shapes, teacher_tap, "teacher", "teacher_tap", None)
        self.distance_weight = _non_negative("distance_weight", distance_weight)
        self.angle_weight = _non_negative("angle_weight", angle_weight)
        self.student_taps = (student_tap,)
        self.teacher_taps = (teacher_tap,)

    @staticmethod
    def _normalised_distances(e: Tensor) -> Tensor:
        d = pairwise_distances(e)
        return d / d[d > 0].mean()

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        e_s = _tap(s, self.student_taps[0], "student").flatten(1)
        e_t = _tap(t, self.teacher_taps[0], "teacher").detach().flatten(1)
        with torch.no_grad():
            d_t = self._normalised_distances(e_t)
            a_t = triplet_cosines(e_t)
        loss_d = F.smooth_l1_loss(self._normalised_distances(e_s), d_t)
        loss_a = F.smooth_l1_loss(triplet_cosines(e_s), a_t)
        return {
            "rkd_distance": self.weight * self.distance_weight * loss_d,
            "rkd_angle": self.weight * self.angle_weight * loss_a,
        }


# ---------------------------------------------------------------------------------------------
# NST (Huang & Wang 2017)
# ---------------------------------------------------------------------------------------------


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """Mean over batch and channel pairs of (a_i . b_j)^2 for a [B, Ca, N], b [B, Cb, N]."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


class NST(Distiller):
    """Neuron selectivity transfer: MMD between the sets of per-channel activation patterns.

    Reference: Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer", eq. (6) with the polynomial kernel k(x, y) = (x . y + c)^d, d = 2, c = 0:
    MMD^2 = mean_ij k(t_i, t_j) + mean_ij k(s_i, s_j) - 2 mean_ij k(s_i, t_j), where s_i, t_j are
    the channels' activation maps flattened over H*W and L2-normalised (so channel counts may
    differ; spatial sizes are pooled to the smaller). Averaged over the batch and summed over
    pairs, as in RepDistiller, whose defaults are followed: weight 50 (`-b 50`), every benchmark
    feature (feat[1:-1]; the raw residual sums on a WRN, see `_feature_taps`). The teacher-teacher term is a constant; it is kept so the value is the
    MMD itself.
    """

    name = "nst"
    default_weight = 50.0
    ce_weight = 1.0
    param_help: ClassVar[dict[str, str]] = {
        "student_taps": "the student's feature maps, paired in order with `teacher_taps`; None: "
        "every benchmark feature (RepDistiller's feat[1:-1])",
        "teacher_taps": "the teacher's feature maps, as many as `student_taps`; None: every "
        "benchmark feature (feat[1:-1])",
        "weight": "loss weight of the summed squared MMDs; None: 50, RepDistiller's `-b 50`, or 1 "
        "when the experiment sets `alpha`",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        self.student_taps, self.teacher_taps = _pair_taps(
            s_shapes, t_shapes, student_taps, teacher_taps
        )

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        total = 0.0
        for s_name, t_name in zip(self.student_taps, self.teacher_taps, strict=True):
            f_s, f_t = _match_spatial(
                _tap(s, s_name, "student"), _tap(t, t_name, "teacher").detach()
            )
            f_s = F.normalize(f_s.flatten(2), dim=2)
            with torch.no_grad():
                f_t = F.normalize(f_t.flatten(2), dim=2)
                k_tt = _poly_kernel_mean(f_t, f_t)
            total = total + k_tt + _poly_kernel_mean(f_s, f_s) - 2 * _poly_kernel_mean(f_s, f_t)
        return {"nst": self.weight * total}


# ---------------------------------------------------------------------------------------------
# SP (Tung & Mori 2019)
# ---------------------------------------------------------------------------------------------


def similarity_matrix(f: Tensor) -> Tensor:
    """Row-L2-normalised Gram matrix of the flattened activations: [B, ...] -> [B, B]."""
    flat = f.flatten(1)
    return F.normalize(flat @ flat.t())


class SP(Distiller):
    """Similarity-preserving distillation: match the batch's pairwise similarity matrices.

    Reference: Tung & Mori, ICCV 2019, "Similarity-Preserving Knowledge Distillation",
    eqs. (2)-(4): G = Q Q^T of the flattened activations, rows L2-normalised, and
    L_SP = 1/b^2 sum_pairs ||G_T - G_S||_F^2, i.e. the sum of squared entry differences divided
    by b^2 (which is the mean over the b x b entries), exactly as RepDistiller's Similarity.
    Defaults from RepDistiller: weight 3000 (`-b 3000`, the paper's gamma for CIFAR-10) on the
    last benchmark feature of each side (feat[-2]: "stageN", or the raw residual sum
    "stage3_pre" on a WRN). Any tap shape works (it is flattened).
    """

    name = "sp"
    default_weight = 3000.0
    ce_weight = 1.0
    param_help: ClassVar[dict[str, str]] = {
        "student_tap": "the student tap whose flattened activations give the batch similarity "
        "matrix (any shape); None: its last benchmark feature (RepDistiller's feat[-2])",
        "teacher_tap": "the teacher tap whose flattened activations give the batch similarity "
        "matrix; None: its last benchmark feature (feat[-2])",
        "weight": "loss weight gamma; None: 3000, RepDistiller's `-b 3000` (the paper's CIFAR-10 "
        "value), or 1 when the experiment sets `alpha`",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_tap: str | None = None,
        teacher_tap: str | None = None,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        s_tap = student_tap or _last_feature(s_shapes, "student", "student_tap")
        t_tap = teacher_tap or _last_feature(t_shapes, "teacher", "teacher_tap")
        _shape(s_shapes, s_tap, "student", "student_tap", None)
        _shape(t_shapes, t_tap, "teacher", "teacher_tap", None)
        self.student_taps = (s_tap,)
        self.teacher_taps = (t_tap,)

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        f_s = _tap(s, self.student_taps[0], "student")
        with torch.no_grad():
            g_t = similarity_matrix(_tap(t, self.teacher_taps[0], "teacher").detach())
        b = f_s.shape[0]
        loss = (similarity_matrix(f_s) - g_t).pow(2).sum() / (b * b)
        return {"sp": self.weight * loss}
