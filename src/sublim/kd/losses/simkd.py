"""SimKD (Chen et al. CVPR 2022): a projector into the teacher's feature space and the teacher's
own classifier at test time."""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Distiller,
    DistillerConfigError,
    Shapes,
    Taps,
    _last_stage,
    _shape,
    _tap,
)

# ---------------------------------------------------------------------------------------------
# SimKD (Chen et al. CVPR 2022)
# ---------------------------------------------------------------------------------------------


class SimKD(Distiller):
    """Reused teacher classifier: project the student's last feature map onto the teacher's.

    Reference: Chen et al., CVPR 2022, "Knowledge Distillation with the Reused Teacher
    Classifier", eq. (2): L = ||f_t - P(f_s)||^2 (MSE), and at test time the student's logits
    are the teacher's classifier on the pooled projected feature (`student_logits`). Projector
    as in the authors' code: 1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 1x1 conv -> BN
    -> ReLU, bottleneck C_t / 2, convs without bias. The final ReLU is in the authors' code (the
    teacher's last feature map is post-ReLU too). Defaults from their scripts: weight 1 and no
    cross-entropy (`-c 0 -d 0 -b 1`: ce_weight = 0), last stage output on both sides. Spatial
    sizes are aligned as in their code (the larger map pooled to the smaller).

    "Last stage output" is the deepest post-activation "stageN", the map the teacher's
    classifier pools, not the benchmark feature of the other methods: on a WRN those differ
    (the raw residual sum "stage3_pre" vs "stage3", its final BN-ReLU), and the projector must
    imitate what the reused classifier was trained on. The authors' code has no WRN.
    """

    name = "simkd"
    default_weight = 1.0
    ce_weight = 0.0
    param_help: ClassVar[dict[str, str]] = {
        "student_tap": "the student feature map the projector reads; None: its deepest "
        'post-activation stage output "stageN"',
        "teacher_tap": "the teacher feature map the projection must match, the one its "
        'classifier pools; None: its deepest post-activation "stageN"',
        "factor": "bottleneck reduction of the projector: its middle width is teacher channels "
        "// factor (2: the authors' C_t / 2)",
        "weight": "loss weight of the projection MSE; None: 1, the authors' `-b 1` (with "
        "cross-entropy weight 0, `-c 0`)",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_tap: str | None = None,
        teacher_tap: str | None = None,
        factor: int = 2,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        s_tap = student_tap or _last_stage(s_shapes, "student", "student_tap")
        t_tap = teacher_tap or _last_stage(t_shapes, "teacher", "teacher_tap")
        s_c, s_h, _ = _shape(s_shapes, s_tap, "student", "student_tap", 3)
        t_c, t_h, t_w = _shape(t_shapes, t_tap, "teacher", "teacher_tap", 3)
        if int(factor) != factor or factor < 1 or t_c // factor < 1:
            raise DistillerConfigError("factor", factor, f"an integer in 1..{t_c}")
        mid = t_c // int(factor)
        self.projector = nn.Sequential(
            nn.Conv2d(s_c, mid, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, t_c, kernel_size=1, bias=False),
            nn.BatchNorm2d(t_c),
            nn.ReLU(),
        )
        self.teacher_hw = (t_h, t_w)
        self.student_taps = (s_tap,)
        self.teacher_taps = (t_tap,)

    def project(self, s_feat: Tensor) -> Tensor:
        """The projected student feature, pooled first if its map is larger than the teacher's."""
        if s_feat.shape[-2] > self.teacher_hw[0]:
            s_feat = F.adaptive_avg_pool2d(s_feat, self.teacher_hw)
        return self.projector(s_feat)

    def student_logits(self, s_feat: Tensor, teacher_classifier: nn.Module) -> Tensor:
        """Logits of the student at test time: teacher_classifier(avgpool(project(s_feat))).

        Freeze the classifier (the teacher's) so only the projector and the student learn."""
        return teacher_classifier(self.project(s_feat).mean(dim=(2, 3)))

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        proj = self.project(_tap(s, self.student_taps[0], "student"))
        f_t = _tap(t, self.teacher_taps[0], "teacher").detach()
        if f_t.shape[-2:] != proj.shape[-2:]:
            f_t = F.adaptive_avg_pool2d(f_t, proj.shape[-2:])
        return {"simkd": self.weight * F.mse_loss(proj, f_t)}
