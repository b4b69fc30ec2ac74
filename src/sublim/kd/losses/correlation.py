"""Methods on correlations between samples or between layers: correlation congruence (Peng et
al. 2019) and SVD-based self-supervised distillation (Lee et al. 2018)."""

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
    _pair_taps,
    _positive,
    _shape,
    _tap,
    _wide,
)

# ---------------------------------------------------------------------------------------------
# CC (Peng et al. 2019)
# ---------------------------------------------------------------------------------------------

CCKernel = Literal["repdistiller", "gaussian"]
CC_KERNELS: tuple[str, ...] = get_args(CCKernel)


def cc_repdistiller_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """RepDistiller's `Correlation` on embeddings [B, D]: with delta = |e_s - e_t|, the mean over
    consecutive samples i = 0..B-2 of sum_d delta[i, d] * delta[i + 1, d] (batch order matters)."""
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


def taylor_rbf_correlation(e: Tensor, gamma: float, order: int) -> Tensor:
    """[B, B] Gaussian RBF correlation exp(-gamma ||x_i - x_j||^2) of the L2-normalised rows x,
    by its P-th order Taylor expansion sum_{p<=P} exp(-2 gamma) (2 gamma)^p / p! (x_i . x_j)^p
    (the CC paper's generalised kernel; exact as P grows, since ||x_i - x_j||^2 = 2 - 2 x_i . x_j)."""
    x = F.normalize(e.flatten(1), dim=1)
    sim = x @ x.t()
    total = torch.zeros_like(sim)
    power = torch.ones_like(sim)
    for p in range(order + 1):
        if p:
            power = power * sim
        total = total + math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * power
    return total


def cc_gaussian_loss(e_s: Tensor, e_t: Tensor, gamma: float, order: int) -> Tensor:
    """The CC paper's L_CC = 1/B^2 ||psi(F_t) - psi(F_s)||^2: the mean squared difference of the
    two Taylor-RBF correlation matrices. Dimensions of `e_s` and `e_t` may differ."""
    k_s = taylor_rbf_correlation(e_s, gamma, order)
    k_t = taylor_rbf_correlation(e_t, gamma, order)
    return (k_s - k_t).pow(2).mean()


class CC(Distiller):
    """Correlation congruence: transfer the correlation between instances.

    Reference: Peng et al., ICCV 2019, "Correlation Congruence for Knowledge Distillation".
    Both suites' benchmark code is RepDistiller's (mdistiller has no CC), which embeds the pooled
    features of both models with a trainable linear layer (`embed_dim` 128; **the teacher's
    embedding is trained too**, so its gradient reaches the distiller, never the teacher) and,
    with `kernel`:

    * "repdistiller" (default; the code behind the published CIFAR-100 numbers, "code from the
      CC authors"): with delta = |e_s - e_t|, the mean over consecutive samples of
      sum_d delta[i, d] delta[i + 1, d]. This is not the paper's kernel formulation, and it
      depends on the batch order. Weight 0.02 (`-b 0.02`).
    * "gaussian": the paper's formulation: the B x B correlation matrices
      k(x_i, x_j) = exp(-gamma ||x_i - x_j||^2) of the L2-normalised embeddings, approximated by
      the P-th order Taylor expansion, matched by their mean squared difference. The constants
      gamma = 0.4 and P = 2 come from a reimplementation (AberHu/Knowledge-Distillation-Zoo's
      example script); they could not be checked against the paper's text. Its loss is on
      another scale than the RepDistiller form (no published weight in the benchmark code): set
      `weight` for it.

    `embed_dim=None` compares the pooled features themselves (no embedding, no extra
    parameters; the "repdistiller" form then needs equal dimensions).
    """

    name = "cc"
    default_weight = 0.02
    ce_weight = 1.0
    param_help: ClassVar[dict[str, str]] = {
        "student_tap": 'the student tap whose flattened per-sample output is embedded ("pool": '
        "the pooled feature, RepDistiller's feat[-1])",
        "teacher_tap": 'the teacher tap whose flattened per-sample output is embedded ("pool", '
        "feat[-1])",
        "embed_dim": "output dimension of the two trainable linear embeddings (student's and "
        "teacher's; 128: RepDistiller's --feat_dim); None: no embedding, the taps are compared "
        "as they are",
        "kernel": "repdistiller (RepDistiller's Correlation: products of consecutive samples' "
        "|e_s - e_t|, behind the published numbers) or gaussian (the paper's Taylor-expanded "
        "Gaussian RBF correlation matrices, mean squared difference)",
        "gamma": "the Gaussian RBF's gamma in exp(-gamma ||x_i - x_j||^2) (kernel gaussian only; "
        "0.4 from a reimplementation, not checked against the paper)",
        "order": "order P of the RBF's Taylor expansion (kernel gaussian only; 2 from a "
        "reimplementation, not checked against the paper)",
        "weight": "loss weight; None: 0.02, RepDistiller's `-b 0.02` (tuned for kernel "
        "repdistiller; set it for kernel gaussian), or 1 when the experiment sets `alpha`",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_tap: str = "pool",
        teacher_tap: str = "pool",
        embed_dim: int | None = 128,
        kernel: CCKernel = "repdistiller",
        gamma: float = 0.4,
        order: int = 2,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        if kernel not in CC_KERNELS:
            raise DistillerConfigError("kernel", kernel, f"one of {', '.join(CC_KERNELS)}")
        self.kernel = kernel
        self.gamma = _positive("gamma", gamma)
        if order < 0:
            raise DistillerConfigError("order", order, "must be >= 0")
        self.order = int(order)
        d_s = math.prod(_shape(s_shapes, student_tap, "student", "student_tap", None))
        d_t = math.prod(_shape(t_shapes, teacher_tap, "teacher", "teacher_tap", None))
        if embed_dim is None:
            if kernel == "repdistiller" and d_s != d_t:
                raise DistillerConfigError(
                    "embed_dim",
                    None,
                    f"kernel repdistiller compares the taps entrywise, but they have {d_s} and "
                    f"{d_t} entries; give an embedding dimension (128) or kernel gaussian",
                )
            self.embed_s: nn.Module = nn.Identity()
            self.embed_t: nn.Module = nn.Identity()
        else:
            if embed_dim < 1:
                raise DistillerConfigError("embed_dim", embed_dim, "must be >= 1 or None")
            self.embed_s = nn.Linear(d_s, embed_dim)
            self.embed_t = nn.Linear(d_t, embed_dim)
        self.student_taps = (student_tap,)
        self.teacher_taps = (teacher_tap,)

    def loss(self, e_s: Tensor, e_t: Tensor) -> Tensor:
        """The unweighted loss between the embedded features [B, D_s], [B, D_t]."""
        if self.kernel == "repdistiller":
            return cc_repdistiller_loss(e_s, e_t)
        with torch.autocast(e_s.device.type, enabled=False):
            return cc_gaussian_loss(_wide(e_s), _wide(e_t), self.gamma, self.order)

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        e_s = self.embed_s(_tap(s, self.student_taps[0], "student").flatten(1))
        # the teacher's features are detached; its embedding is trained (RepDistiller)
        e_t = self.embed_t(_tap(t, self.teacher_taps[0], "teacher").detach().flatten(1))
        return {"cc": self.weight * self.loss(e_s, e_t)}


# ---------------------------------------------------------------------------------------------
# KDSVD (Lee, Kim & Song 2018)
# ---------------------------------------------------------------------------------------------

SVDMatrix = Literal["repdistiller", "mdistiller"]
SVD_MATRICES: tuple[str, ...] = get_args(SVDMatrix)


def _finite(x: Tensor) -> Tensor:
    """Non-finite entries set to 0 (RepDistiller's removenan)."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def svd_vectors(f: Tensor, n: int, matrix: str = "repdistiller") -> tuple[Tensor, Tensor]:
    """(s, v): the `n` leading singular values [B, n] and right singular vectors [B, D, n] of
    each sample's feature matrix, non-finite entries zeroed, each L2-normalised (s over its n
    values, every vector over D).

    The matrix is H*W x C ("repdistiller": v lives in channel space, D = C) or C*H x W
    ("mdistiller": D = W). Signs are LAPACK's, as with RepDistiller's torch.svd (which is
    torch.linalg.svd with V = Vh^H)."""
    b, c, h, w = f.shape
    x = (
        f.reshape(b, c, h * w).transpose(1, 2)
        if matrix == "repdistiller"
        else f.reshape(b, c * h, w)
    )
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    s, v = _finite(s), _finite(vh.mH)
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def align_singular_vectors(v_s: Tensor, v_t: Tensor) -> Tensor:
    """v_s [B, D, n_s] projected onto v_t's columns [B, D, k]: for each teacher vector, the
    student vector of largest |cosine| with its sign (every tie kept, as RepDistiller's
    torch.eq does), all others dropped: [B, D, k]."""
    cos = v_s.mT @ v_t
    a = cos.abs()
    mask = torch.where(a == a.amax(1, keepdim=True), torch.sign(cos), torch.zeros_like(cos))
    return v_s @ mask


def _rbf(a: Tensor, b: Tensor) -> Tensor:
    """exp(-(a_i - b_j)^2 / 8) for a [B, Da, k], b [B, Db, k]: [B, Da, Db, k]."""
    return torch.exp(-(a.unsqueeze(2) - b.unsqueeze(1)).pow(2) / 8)


def kdsvd_losses(
    g_s: Sequence[Tensor], g_t: Sequence[Tensor], k: int = 1, matrix: str = "repdistiller"
) -> list[Tensor]:
    """RepDistiller's KDSVD on paired feature maps: one loss per consecutive pair of taps
    (n_taps - 1 values): sum over samples and entries of the squared difference between the
    student's and teacher's RBF matrices of their aligned singular vectors, / B."""
    losses: list[Tensor] = []
    prev_s = prev_t = None
    for f_s, f_t in zip(g_s, g_t, strict=True):
        with torch.no_grad():
            s_t, v_t = svd_vectors(_wide(f_t.detach()), k, matrix)
        _, v_s = svd_vectors(_wide(f_s), k + 3, matrix)
        scale = s_t.unsqueeze(1)
        v_s = align_singular_vectors(v_s, v_t) * scale
        v_t = v_t * scale
        if prev_s is not None and prev_t is not None:
            with torch.no_grad():
                rbf_t = _rbf(v_t, prev_t)
            l2 = (_rbf(v_s, prev_s) - rbf_t).pow(2)
            losses.append(_finite(l2).sum() / f_s.shape[0])
        prev_s, prev_t = v_s, v_t
    return losses


class KDSVD(Distiller):
    """Self-supervised knowledge distillation with singular value decomposition.

    Reference: Lee, Kim & Song, ECCV 2018, "Self-supervised Knowledge Distillation Using
    Singular Value Decomposition", as ported in RepDistiller (from the authors' TensorFlow code):
    per tap, the SVD of each sample's feature matrix; the teacher keeps k leading right singular
    vectors, the student k + 3, each student vector aligned (sign and choice) to the teacher
    vector it is most parallel to; both scaled by the teacher's normalised singular values; the
    RBF exp(-d^2 / 8) between the entries of consecutive taps' vectors is matched in squared
    error (non-finite entries zeroed), summed, / B, and summed over tap pairs. Maps are not
    pooled. The SVD is differentiated (as in RepDistiller): its gradient is ill-defined where
    singular values repeat.

    `matrix` chooses the feature matrix:

    * "repdistiller" (default; the original port): H*W x C, so the vectors live in channel space
      and student and teacher need equal channel counts at every tap;
    * "mdistiller": C*H x W (mdistiller's `view(B, C*H, W)`), so they need equal widths.

    mdistiller also casts the SVD input to float32 (this keeps the input's precision, at least
    float32). Neither suite publishes a KDSVD number. Weight 1 (mdistiller's FEAT_WEIGHT;
    RepDistiller has no KDSVD script), every benchmark feature (feat[1:-1]), at least two.
    """

    name = "kdsvd"
    default_weight = 1.0
    ce_weight = 1.0
    param_help: ClassVar[dict[str, str]] = {
        "student_taps": "the student's feature maps (at least two), paired in order with "
        "`teacher_taps`; None: every benchmark feature (RepDistiller's feat[1:-1])",
        "teacher_taps": "the teacher's feature maps, as many as `student_taps`; None: every "
        "benchmark feature (feat[1:-1])",
        "k": "number of the teacher's leading singular vectors kept (the student keeps k + 3; "
        "1: RepDistiller's and mdistiller's value)",
        "matrix": "the per-sample matrix decomposed: repdistiller (H*W x C, the original port; "
        "equal channel counts needed) or mdistiller (C*H x W; equal widths needed)",
        "weight": "loss weight of the summed RBF losses; None: 1, mdistiller's FEAT_WEIGHT "
        "(RepDistiller has no KDSVD script), or 1 when the experiment sets `alpha`",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
        k: int = 1,
        matrix: SVDMatrix = "repdistiller",
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        if matrix not in SVD_MATRICES:
            raise DistillerConfigError("matrix", matrix, f"one of {', '.join(SVD_MATRICES)}")
        if k < 1:
            raise DistillerConfigError("k", k, "must be >= 1")
        self.k, self.matrix = int(k), matrix
        self.student_taps, self.teacher_taps = _pair_taps(
            s_shapes, t_shapes, student_taps, teacher_taps
        )
        if len(self.student_taps) < 2:
            raise DistillerConfigError(
                "student_taps",
                self.student_taps,
                "needs at least two tap pairs (it relates consecutive taps)",
            )
        axis, what = (0, "channel counts") if matrix == "repdistiller" else (2, "widths")
        for s_tap, t_tap in zip(self.student_taps, self.teacher_taps, strict=True):
            s_d, t_d = s_shapes[s_tap][axis], t_shapes[t_tap][axis]
            if s_d != t_d:
                raise DistillerConfigError(
                    "teacher_taps",
                    t_tap,
                    f"kdsvd with matrix {matrix} needs equal {what}, but the student's {s_tap!r} "
                    f"has {s_d} and the teacher's {t_tap!r} {t_d}; pair other taps"
                    + (" or use matrix mdistiller" if matrix == "repdistiller" else ""),
                )

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        g_s = [_tap(s, name, "student") for name in self.student_taps]
        g_t = [_tap(t, name, "teacher").detach() for name in self.teacher_taps]
        with torch.autocast(g_s[0].device.type, enabled=False):
            total = sum(kdsvd_losses(g_s, g_t, self.k, self.matrix))
        return {"kdsvd": self.weight * total}
