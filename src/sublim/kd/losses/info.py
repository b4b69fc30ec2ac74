"""Information-theoretic methods: probabilistic knowledge transfer (Passalis & Tefas 2018) and
variational information distillation (Ahn et al. 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Distiller,
    DistillerConfigError,
    Shapes,
    Taps,
    _match_spatial,
    _pair_taps,
    _positive,
    _shape,
    _tap,
    _wide,
)

# ---------------------------------------------------------------------------------------------
# PKT (Passalis & Tefas 2018)
# ---------------------------------------------------------------------------------------------


def pkt_probabilities(x: Tensor, eps: float = 1e-7) -> Tensor:
    """Row-stochastic [B, B] matrix of cosine similarities mapped to [0, 1] (PKT's P).

    Rows are divided by (norm + eps) and NaNs set to 0, as in the authors' code; then
    S = (X X^T + 1) / 2, each row divided by its sum."""
    x = x.flatten(1)
    x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    sim = (x @ x.t() + 1.0) / 2.0
    return sim / sim.sum(1, keepdim=True)


def pkt_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """mean_ij P_t log((P_t + eps) / (P_s + eps)) over the B x B entries (a mean, not a sum,
    as in RepDistiller and mdistiller). Dimensions of `f_s` and `f_t` may differ."""
    with torch.autocast(f_s.device.type, enabled=False):
        p_s = pkt_probabilities(_wide(f_s), eps)
        with torch.no_grad():
            p_t = pkt_probabilities(_wide(f_t.detach()), eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


class PKT(Distiller):
    """Probabilistic knowledge transfer: match the batch's conditional probability densities.

    Reference: Passalis & Tefas, ECCV 2018, "Learning Deep Representations with Probabilistic
    Knowledge Transfer", with the cosine kernel (the authors' code): the
    similarities of the L2-normalised representations, mapped to [0, 1] and normalised per row
    into conditional probabilities p_{j|i}, matched with KL(P_t || P_s). As in the authors' code,
    RepDistiller and mdistiller (identical): eps 1e-7 inside the log and after the norm, and the
    KL averaged over the B x B entries. Defaults from RepDistiller: weight 30000 (`-b 30000`) on
    "pool" (feat[-1]); student and teacher dimensions may differ.
    """

    name = "pkt"
    default_weight = 30000.0
    ce_weight = 1.0
    param_help: ClassVar[dict[str, str]] = {
        "student_tap": "the student tap whose flattened per-sample output is the representation "
        '("pool": the pooled feature, RepDistiller\'s feat[-1])',
        "teacher_tap": "the teacher tap whose flattened per-sample output is the representation "
        '("pool", feat[-1]); its dimension may differ from the student\'s',
        "eps": "the constant added to the norms and inside the log (1e-7: the authors', "
        "RepDistiller's and mdistiller's value)",
        "weight": "loss weight of the KL between the similarity distributions; None: 30000, "
        "RepDistiller's `-b 30000` (mdistiller's too), or 1 when the experiment sets `alpha`",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_tap: str = "pool",
        teacher_tap: str = "pool",
        eps: float = 1e-7,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        _shape(s_shapes, student_tap, "student", "student_tap", None)
        _shape(t_shapes, teacher_tap, "teacher", "teacher_tap", None)
        self.eps = _positive("eps", eps)
        self.student_taps = (student_tap,)
        self.teacher_taps = (teacher_tap,)

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        f_s = _tap(s, self.student_taps[0], "student")
        f_t = _tap(t, self.teacher_taps[0], "teacher")
        return {"pkt": self.weight * pkt_loss(f_s, f_t, self.eps)}


# ---------------------------------------------------------------------------------------------
# VID (Ahn et al. 2019)
# ---------------------------------------------------------------------------------------------

VIDVariance = Literal["learned", "fixed"]
VID_VARIANCES: tuple[str, ...] = get_args(VIDVariance)


def vid_nll(mean: Tensor, target: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """Mean Gaussian negative log-likelihood (without its constant) of `target` [B, C, H, W]
    under N(mean, var_c), var_c = softplus(log_scale_c) + eps: mean of 1/2 ((mu - t)^2 / var +
    log var)."""
    var = (F.softplus(log_scale) + eps).view(1, -1, 1, 1)
    return (0.5 * ((mean - target).pow(2) / var + torch.log(var))).mean()


class VIDPair(nn.Module):
    """One VID tap pair: the regressor mu(s) (three bias-free 1x1 convs s_c -> t_c -> t_c -> t_c
    with ReLUs between, RepDistiller's VIDLoss(s_c, t_c, t_c)) and the per-channel log_scale,
    a Parameter when the variance is learned and a buffer (never trained) when it is fixed."""

    def __init__(self, s_c: int, t_c: int, init_variance: float, eps: float, learned: bool) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(s_c, t_c, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(t_c, t_c, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(t_c, t_c, 1, bias=False),
        )
        # softplus(log_scale) + eps = init_variance at the start
        log_scale = torch.full((t_c,), math.log(math.expm1(init_variance - eps)))
        if learned:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.eps = eps

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        """The pair's loss: the larger map is pooled to the smaller's size first."""
        f_s, f_t = _match_spatial(f_s, f_t)
        return vid_nll(self.regressor(f_s), f_t, self.log_scale, self.eps)


class VID(Distiller):
    """Variational information distillation: maximise a variational lower bound on the mutual
    information between teacher and student features.

    Reference: Ahn et al., CVPR 2019, "Variational Information Distillation for Knowledge
    Transfer": -log q(t | s) with q a Gaussian whose mean is a regressor of the
    student map and whose per-channel variance is softplus(alpha_c) + eps. As in the authors'
    code and RepDistiller: the regressor is three 1x1 convs without bias (s_c -> t_c -> t_c ->
    t_c, ReLUs between), the variance starts at 5 (eps 1e-5), the larger map of a pair is pooled
    to the smaller's size, the negative log-likelihood (without its constant) is averaged over
    batch, channels and positions, and the pairs' losses are summed; weight 1 (`-b 1`), every
    benchmark feature (feat[1:-1]).

    `variance` chooses who trains the variance:

    * "learned" (default; RepDistiller, whose table has the published VID numbers): log_scale
      is a Parameter trained with the regressors (and counted in `extra_parameters`);
    * "fixed" (mdistiller, which keeps its log_scales in a plain list the optimiser never sees):
      log_scale is a buffer and the variance stays at `init_variance`.
    """

    name = "vid"
    default_weight = 1.0
    ce_weight = 1.0
    param_help: ClassVar[dict[str, str]] = {
        "student_taps": "the student's feature maps, paired in order with `teacher_taps`; None: "
        "every benchmark feature (RepDistiller's feat[1:-1])",
        "teacher_taps": "the teacher's feature maps, as many as `student_taps`; None: every "
        "benchmark feature (feat[1:-1])",
        "variance": "learned (RepDistiller: the per-channel variance is trained with the "
        "regressors) or fixed (mdistiller: it stays at init_variance)",
        "init_variance": "the variance softplus(log_scale) + eps starts at (5: RepDistiller's and "
        "mdistiller's value)",
        "eps": "the constant added to softplus(log_scale) (1e-5: RepDistiller's and mdistiller's "
        "value)",
        "weight": "loss weight of the summed negative log-likelihoods; None: 1, RepDistiller's "
        "`-b 1` (mdistiller's too)",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
        variance: VIDVariance = "learned",
        init_variance: float = 5.0,
        eps: float = 1e-5,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        if variance not in VID_VARIANCES:
            raise DistillerConfigError("variance", variance, f"one of {', '.join(VID_VARIANCES)}")
        self.variance = variance
        self.eps = _positive("eps", eps)
        if not init_variance > eps:
            raise DistillerConfigError("init_variance", init_variance, f"must be > eps ({eps})")
        self.student_taps, self.teacher_taps = _pair_taps(
            s_shapes, t_shapes, student_taps, teacher_taps
        )
        self.pairs = nn.ModuleList(
            VIDPair(
                _shape(s_shapes, s_tap, "student", "student_taps", 3)[0],
                _shape(t_shapes, t_tap, "teacher", "teacher_taps", 3)[0],
                float(init_variance),
                self.eps,
                learned=variance == "learned",
            )
            for s_tap, t_tap in zip(self.student_taps, self.teacher_taps, strict=True)
        )

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        total = 0.0
        for pair, s_name, t_name in zip(
            self.pairs, self.student_taps, self.teacher_taps, strict=True
        ):
            total = total + pair(_tap(s, s_name, "student"), _tap(t, t_name, "teacher").detach())
        return {"vid": self.weight * total}
