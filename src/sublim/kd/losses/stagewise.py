"""Methods that distil in a first stage only: activation boundaries (Heo et al. 2019) and the
flow of solution procedure (Yim et al. 2017), as RepDistiller runs them.

Both train the student's feature layers (AB also its connectors) on their loss for
`--init-epochs` (30 in RepDistiller) before the main training, which is then plain cross-entropy:
RepDistiller sets their `loss_kd` to 0 after the init stage, whatever `-b` is, so the loop runs
neither the distiller nor the teacher there (`ce_only_main`). `forward` still returns the
weighted loss, for use as an ordinary loss term.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from .base import (
    Distiller,
    DistillerConfigError,
    InitStage,
    Shapes,
    Taps,
    _feature_taps,
    _match_spatial,
    _pair_taps,
    _positive,
    _preact_taps,
    _tap,
    _wide,
)
from .features import ConvReg

# ---------------------------------------------------------------------------------------------
# Activation boundaries (Heo et al. 2019)
# ---------------------------------------------------------------------------------------------


def ab_level_loss(source: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """Summed alternative-L2 boundary loss of one level: (s + m)^2 where the teacher's neuron is
    off (t <= 0) and s > -m, (s - m)^2 where it is on (t > 0) and s <= m; i.e. the squared
    distance of s to the half-line [m, inf) or (-inf, -m] on the teacher's side."""
    on = target > 0
    source = _wide(source)
    gap = torch.where(on, (source - margin).clamp(max=0.0), (source + margin).clamp(min=0.0))
    return gap.pow(2).sum()  # in float32 at least: the sum overflows float16 under --amp


def _total(terms: list[Tensor]) -> Tensor:
    """terms[0] + terms[1] + ..., in order (RepDistiller's sum of its loss list)."""
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


class AB(Distiller):
    """Activation-boundary distillation: the student's pre-activations, through a connector,
    learn to fall on the same side of zero as the teacher's, by a margin.

    Reference: Heo, Lee, Yun & Choi, AAAI 2019, "Knowledge Transfer via Distillation of
    Activation Boundaries Formed by Hidden Neurons", eq. (6) (the alternative L2 loss with margin
    m = 1), as RepDistiller's ABLoss: per level i of n (the deepest weighted 1),
    w_i = 2^(i - n + 1), L_i = sum[(s + m)^2 1(s > -m, t <= 0) + (s - m)^2 1(s <= m, t > 0)],
    and the loss sum_i w_i L_i / B * 3 / 1000, with s = connector(student pre-activation) and t
    the teacher's. Taps: both models' pre-activation features (RepDistiller's preact=True
    feat[1:-1], `TapNet.preact_taps`). Connector per pair: the identity when channels and height
    agree, else RepDistiller's ConvReg without its ReLU (conv + BN).

    Two stages, as RepDistiller: the init stage (30 epochs) trains the connectors and the
    student's features (not its classifier) on the unweighted loss; the main stage is plain
    cross-entropy (RepDistiller's `-b 1` has no effect; the connectors are unused).
    Departures: RepDistiller's WRN students run their final BN (feature 3's pre-activation) in
    eval mode and untrained in the init stage, and apply the BN of features 1 and 2 twice per
    step (its running statistics move twice); here the student's features run once, in train
    mode, the final BN included.
    """

    name = "ab"
    default_weight = 1.0  # RepDistiller's -b 1 (unused: the main stage is plain CE)
    ce_weight = 1.0
    init_stage = InitStage(epochs=30, student="features")
    ce_only_main = True
    param_help: ClassVar[dict[str, str]] = {
        "student_taps": "the student's pre-activation feature maps, paired in order with "
        "`teacher_taps`; None: its pre-activation benchmark features (RepDistiller's preact=True "
        "feat[1:-1])",
        "teacher_taps": "the teacher's pre-activation feature maps, as many as `student_taps`; "
        "None: its pre-activation benchmark features",
        "margin": "margin m of the boundary loss (1.0: RepDistiller's and the paper's value)",
        "weight": "weight of the AB loss when used as a loss term; the training loop does not "
        "add it (RepDistiller's AB is plain CE after its init stage, whose loss is unweighted); "
        "None: 1, RepDistiller's `-b 1`",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
        margin: float = 1.0,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        self.margin = _positive("margin", margin)
        if student_taps is None:
            student_taps = _preact_taps(s_shapes, "student", "student_taps")
        if teacher_taps is None:
            teacher_taps = _preact_taps(t_shapes, "teacher", "teacher_taps")
        self.student_taps, self.teacher_taps = _pair_taps(
            s_shapes, t_shapes, student_taps, teacher_taps
        )
        connectors: list[nn.Module] = []
        for s_tap, t_tap in zip(self.student_taps, self.teacher_taps, strict=True):
            s_shape, t_shape = tuple(s_shapes[s_tap]), tuple(t_shapes[t_tap])
            if s_shape[:2] == t_shape[:2]:  # channels and height, as RepDistiller compares
                connectors.append(nn.Identity())
                continue
            try:
                connectors.append(ConvReg(s_shape, t_shape, use_relu=False))
            except DistillerConfigError:
                raise DistillerConfigError(
                    "student_taps",
                    s_tap,
                    f"its map {s_shape} is smaller than the teacher's {t_tap!r} {t_shape} (other "
                    "than half its size): no connector; pair taps of compatible sizes",
                ) from None
        self.connectors = nn.ModuleList(connectors)
        n = len(self.connectors)
        self.level_weights = tuple(2.0 ** (i - n + 1) for i in range(n))

    def level_losses(self, s: Taps, t: Taps) -> list[Tensor]:
        """The loss of each level, already times w_i, / B and * 3 / 1000 (RepDistiller's list)."""
        out = []
        pairs = zip(self.student_taps, self.teacher_taps, self.connectors, strict=True)
        for (s_tap, t_tap, connector), w in zip(pairs, self.level_weights, strict=True):
            source = connector(_tap(s, s_tap, "student"))
            target = _tap(t, t_tap, "teacher").detach()
            out.append(w * ab_level_loss(source, target, self.margin) / source.shape[0] / 1000 * 3)
        return out

    def init_loss(self, s: Taps, t: Taps) -> Tensor:
        return _total(self.level_losses(s, t))

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        return {"ab": self.weight * _total(self.level_losses(s, t))}


# ---------------------------------------------------------------------------------------------
# Flow of solution procedure (Yim et al. 2017)
# ---------------------------------------------------------------------------------------------


def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """G[b, j, i] = mean over positions of top_j * bottom_i: [B, C_top, C_bottom]. The
    spatially larger map is first average-pooled to the other's size (RepDistiller)."""
    bottom, top = _match_spatial(bottom, top)
    hw = bottom.shape[-2] * bottom.shape[-1]
    return torch.bmm(top.flatten(2), bottom.flatten(2).transpose(1, 2)) / hw


def fsp_matrices(maps: Sequence[Tensor]) -> list[Tensor]:
    """The FSP matrices of consecutive maps (maps[i], maps[i + 1])."""
    return [fsp_matrix(a, b) for a, b in zip(maps[:-1], maps[1:], strict=True)]


class FSP(Distiller):
    """Flow of solution procedure: match the Gram matrices between consecutive feature maps.

    Reference: Yim, Joo, Bae & Kim, CVPR 2017, "A Gift from Knowledge Distillation: Fast
    Optimization, Network Minimization and Transfer Learning", eq. (1)-(2), as RepDistiller's
    FSP: for consecutive taps (bottom, top), G[b, j, i] = mean_hw top_j bottom_i, and the loss
    sum over pairs of mean((G_s - G_t)^2) (the paper's per-pair weights are all 1). Taps:
    RepDistiller's feat[:-1], the stem and every benchmark feature. The student's and the
    teacher's channel counts must agree at every tap (RepDistiller raises otherwise: no FSP for
    wrn_40_2 -> wrn_40_1 or across architectures).

    Two stages, as RepDistiller: the init stage (30 epochs) trains the student's features (not
    its classifier) on the unweighted loss; the main stage is plain cross-entropy
    (RepDistiller's `-b 50` has no effect).
    """

    name = "fsp"
    default_weight = 50.0  # RepDistiller's -b 50 (unused: the main stage is plain CE)
    ce_weight = 1.0
    init_stage = InitStage(epochs=30, student="features")
    ce_only_main = True
    param_help: ClassVar[dict[str, str]] = {
        "student_taps": "the student's feature maps whose consecutive pairs give its FSP "
        "matrices; None: the stem and every benchmark feature (RepDistiller's feat[:-1])",
        "teacher_taps": "the teacher's feature maps, as many as `student_taps`, with the same "
        "channel counts; None: the stem and every benchmark feature",
        "weight": "weight of the FSP loss when used as a loss term; the training loop does not "
        "add it (RepDistiller's FSP is plain CE after its init stage, whose loss is unweighted); "
        "None: 50, RepDistiller's `-b 50`",
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
        if student_taps is None:
            student_taps = ("stem", *_feature_taps(s_shapes))
        if teacher_taps is None:
            teacher_taps = ("stem", *_feature_taps(t_shapes))
        s_taps, t_taps = _pair_taps(s_shapes, t_shapes, student_taps, teacher_taps)
        if len(s_taps) < 2:
            raise DistillerConfigError("student_taps", s_taps, "FSP needs at least two taps")
        differ = [
            f"{a} {s_shapes[a][0]} vs {b} {t_shapes[b][0]}"
            for a, b in zip(s_taps, t_taps, strict=True)
            if s_shapes[a][0] != t_shapes[b][0]
        ]
        if differ:
            raise DistillerConfigError(
                "student_taps",
                s_taps,
                "FSP needs equal student and teacher channel counts at every tap; they differ "
                f"at {', '.join(differ)} (RepDistiller runs FSP on same-width pairs only)",
            )
        self.student_taps, self.teacher_taps = s_taps, t_taps

    def pair_losses(self, s: Taps, t: Taps) -> list[Tensor]:
        """mean((G_s - G_t)^2) of each consecutive pair of taps."""
        g_s = fsp_matrices([_tap(s, k, "student") for k in self.student_taps])
        with torch.no_grad():
            g_t = fsp_matrices([_tap(t, k, "teacher").detach() for k in self.teacher_taps])
        return [(a - b).pow(2).mean() for a, b in zip(g_s, g_t, strict=True)]

    def init_loss(self, s: Taps, t: Taps) -> Tensor:
        return _total(self.pair_losses(s, t))

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        return {"fsp": self.weight * _total(self.pair_losses(s, t))}
