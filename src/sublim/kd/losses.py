"""Classical and feature distillation methods as registered components.

A `Distiller` reads the student's and the teacher's named taps (see `kd.models`: "stem",
"stage1".."stageN", "stageN_pre", "pool", "logits") and returns a dict of named scalar losses,
each already multiplied by its weight. The training loop never forks per method: it asks the
distiller which taps to compute (`student_taps`, `teacher_taps`), calls it, and adds the losses
to the cross-entropy with `combine`.

Conventions shared by every method:

* Shapes are per sample: feature maps (C, H, W), pool (D,), logits (K,). Channel counts and
  spatial sizes come from the shapes given at construction, never from constants.
* The teacher side never receives a gradient: teacher taps are detached and every computation
  on them runs under `torch.no_grad()`.
* `default_weight` and `ce_weight` are the loss and cross-entropy weights of the reference recipe
  (RepDistiller's `-b`/`-r`, mdistiller's FEAT_WEIGHT/CE_WEIGHT); `weight=` overrides the first.
  `combine(ce, losses, alpha=None, ce_weight=d.ce_weight)` reproduces the reference recipe;
  `combine(ce, losses, alpha=0.5)` with distillers built with `weight=1.0` is the experiment
  notes' `(1 - alpha) * CE + alpha * distill_loss`.
* When two feature maps that are compared have different spatial sizes, the larger one is
  adaptive-average-pooled to the smaller one's size (RepDistiller's AT/NST/FT, SimKD).
* Parameters a method adds (regressor, translator, paraphraser, projector) live in the
  distiller; move it to the device with `.to(device)` and give its parameters to the optimiser.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = [
    "METHODS",
    "AT",
    "DKD",
    "FT",
    "KD",
    "NST",
    "RKD",
    "SP",
    "Distiller",
    "DistillerConfigError",
    "FitNets",
    "LogitStd",
    "SimKD",
    "combine",
    "create_distiller",
    "zscore",
]

Shapes = Mapping[str, Sequence[int]]
Taps = Mapping[str, Tensor]


class DistillerConfigError(ConfigError, ValueError):
    """A bad method name, parameter or tap. A ValueError, and a UserError the CLI prints."""


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------

_STAGE = re.compile(r"^stage(\d+)$")


def _stage_taps(shapes: Shapes) -> list[str]:
    """The post-activation stage outputs 'stage1'..'stageN' present in `shapes`, in order."""
    found = [(int(m.group(1)), k) for k in shapes if (m := _STAGE.match(k))]
    return [k for _, k in sorted(found)]


def _last_stage(shapes: Shapes, side: str, param: str) -> str:
    """The deepest 'stageN' tap (RepDistiller's feat[-2]: the last feature map before pooling)."""
    stages = _stage_taps(shapes)
    if not stages:
        raise DistillerConfigError(
            param, None, f"the {side} has no 'stageN' tap (taps: {sorted(shapes)}); name one"
        )
    return stages[-1]


def _shape(shapes: Shapes, tap: str, side: str, param: str, ndim: int | None) -> tuple[int, ...]:
    """The per-sample shape of `tap`, refusing a missing tap or one of the wrong rank."""
    if tap not in shapes:
        raise DistillerConfigError(
            param, tap, f"the {side} has no tap {tap!r}; its taps are {sorted(shapes)}"
        )
    shape = tuple(int(d) for d in shapes[tap])
    if ndim is not None and len(shape) != ndim:
        what = {1: "a vector (D,)", 3: "a feature map (C, H, W)"}[ndim]
        raise DistillerConfigError(
            param, tap, f"needs {what} per sample, but the {side}'s {tap!r} has shape {shape}"
        )
    return shape


def _tap(taps: Taps, name: str, side: str) -> Tensor:
    """Tap `name` from a model's outputs (KeyError naming the tap and the side)."""
    try:
        return taps[name]
    except KeyError:
        raise KeyError(f"the {side} outputs have no tap {name!r}; got {sorted(taps)}") from None


def _match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the spatially larger of two [B, C, H, W] maps to the other's size."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    if a.shape[-2] >= b.shape[-2]:
        return F.adaptive_avg_pool2d(a, b.shape[-2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[-2:])


def _positive(param: str, value: float) -> float:
    if not value > 0:
        raise DistillerConfigError(param, value, "must be > 0")
    return float(value)


def _non_negative(param: str, value: float) -> float:
    if not value >= 0:
        raise DistillerConfigError(param, value, "must be >= 0")
    return float(value)


def _kl_softened(s_logits: Tensor, t_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(t/T) || softmax(s/T)) summed over classes, mean over the batch, times T^2."""
    log_p_s = F.log_softmax(s_logits / temperature, dim=1)
    p_t = F.softmax(t_logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature**2


# ---------------------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------------------


class Distiller(nn.Module):
    """One distillation method: reads student and teacher taps by name, returns named losses.

    Subclasses set `name`, `default_weight` and `ce_weight`, and in `__init__` the instance's
    `student_taps` / `teacher_taps` (the taps it reads, so models compute only those).
    """

    name: ClassVar[str] = ""
    default_weight: ClassVar[float] = 1.0  # the reference recipe's loss weight
    ce_weight: ClassVar[float] = 1.0  # the reference recipe's cross-entropy weight
    student_taps: tuple[str, ...]
    teacher_taps: tuple[str, ...]

    def __init__(self, s_shapes: Shapes, t_shapes: Shapes, *, weight: float | None = None) -> None:
        super().__init__()
        self.weight = _non_negative("weight", self.default_weight if weight is None else weight)
        self.student_taps = ()
        self.teacher_taps = ()

    def forward(
        self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0
    ) -> dict[str, Tensor]:  # pragma: no cover - abstract
        """Named scalar losses, each already multiplied by its weight.

        `epoch` is the 0-based index of the current epoch (only DKD's warm-up reads it)."""
        raise NotImplementedError

    def extra_parameters(self) -> int:
        """Number of parameters the method adds (regressors, projectors, ...), as in mdistiller."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, student_taps={self.student_taps}, "
            f"teacher_taps={self.teacher_taps}"
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
    weight 1 of their config. The std uses Bessel's correction (torch's default, as in their
    `normalize`); the paper writes the population std, a factor sqrt(K / (K - 1)) apart.
    """

    name = "logit_std"
    default_weight = 9.0
    ce_weight = 1.0

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        temperature: float = 2.0,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        if self.num_classes < 2:
            raise DistillerConfigError("logits", self.num_classes, "z-scores need >= 2 classes")
        self.temperature = _positive("temperature", temperature)

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        with torch.no_grad():
            z_t = zscore(_tap(t, "logits", "teacher").detach())
        z_s = zscore(_tap(s, "logits", "student"))
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

    mdistiller counts epochs from 1 and scales by min(epoch / warmup, 1); `epoch` here is the
    0-based epoch index, so the factor is min((epoch + 1) / warmup, 1): the first epoch gets
    1/20 and the 20th (index 19) and later get the full loss, the same schedule.
    """

    name = "dkd"
    default_weight = 1.0
    ce_weight = 1.0

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


# ---------------------------------------------------------------------------------------------
# FitNets (Romero et al. 2015)
# ---------------------------------------------------------------------------------------------


class ConvReg(nn.Module):
    """RepDistiller's convolutional regressor from a student map to a teacher map's shape.

    Same size: 1x1 conv; student twice the teacher's size: 3x3 conv, stride 2; half the size:
    4x4 transposed conv, stride 2; otherwise larger: a (1 + dH) x (1 + dW) valid conv. Then BN
    and (by default) ReLU. A student map smaller than the teacher's (other than half) is refused.
    """

    def __init__(
        self, s_shape: Sequence[int], t_shape: Sequence[int], use_relu: bool = True
    ) -> None:
        super().__init__()
        s_c, s_h, s_w = s_shape
        t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise DistillerConfigError(
                "guided",
                tuple(s_shape),
                f"a student map smaller than the teacher's {tuple(t_shape)} (other than half "
                "its size) has no regressor; choose taps of compatible sizes",
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


class FitNets(Distiller):
    """Hint learning: a regressor maps the student's guided layer onto the teacher's hint layer.

    Reference: Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets", eq. (3):
    L_HT = 1/2 ||u_h(x) - r(v_g(x))||^2, with the hint u_h a teacher hidden layer and the guided
    layer v_g a student hidden layer (the paper's naming: `hint` is the teacher tap, `guided` the
    student tap). Loss and regressor as in RepDistiller: mean squared error (`nn.MSELoss`) after
    `ConvReg` (conv + BN + ReLU), weight 100 (`-b 100`), hint layer 2 -> "stage2" on both sides.
    The paper's first stage (training the student up to the guided layer plus the regressor on
    the hint loss alone) is a training-recipe matter; RepDistiller trains everything jointly.
    `regressor` is exposed for such a stage.
    """

    name = "fitnets"
    default_weight = 100.0
    ce_weight = 1.0

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        guided: str = "stage2",
        hint: str = "stage2",
        use_relu: bool = True,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        s_shape = _shape(s_shapes, guided, "student", "guided", 3)
        t_shape = _shape(t_shapes, hint, "teacher", "hint", 3)
        self.regressor = ConvReg(s_shape, t_shape, use_relu=use_relu)
        self.student_taps = (guided,)
        self.teacher_taps = (hint,)

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        f_s = self.regressor(_tap(s, self.student_taps[0], "student"))
        f_t = _tap(t, self.teacher_taps[0], "teacher").detach()
        return {"fitnets": self.weight * F.mse_loss(f_s, f_t)}


# ---------------------------------------------------------------------------------------------
# Attention transfer (Zagoruyko & Komodakis 2017)
# ---------------------------------------------------------------------------------------------


def _pair_taps(
    s_shapes: Shapes,
    t_shapes: Shapes,
    student_taps: Sequence[str] | None,
    teacher_taps: Sequence[str] | None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Student/teacher tap pairs; None means every stage output (RepDistiller's feat[1:-1])."""
    for param, value in (("student_taps", student_taps), ("teacher_taps", teacher_taps)):
        if isinstance(value, str):
            raise DistillerConfigError(
                param, value, "a sequence of tap names, e.g. ('stage1', 'stage2')"
            )
    s_taps = tuple(_stage_taps(s_shapes) if student_taps is None else student_taps)
    t_taps = tuple(_stage_taps(t_shapes) if teacher_taps is None else teacher_taps)
    if not s_taps or len(s_taps) != len(t_taps):
        raise DistillerConfigError(
            "teacher_taps",
            t_taps,
            f"needs as many taps as the student's {s_taps} (at least one); pass "
            "student_taps=... and teacher_taps=... to pair them",
        )
    for tap in s_taps:
        _shape(s_shapes, tap, "student", "student_taps", 3)
    for tap in t_taps:
        _shape(t_shapes, tap, "teacher", "teacher_taps", 3)
    return s_taps, t_taps


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """Q = normalize(mean_c |A_c|^p) flattened: [B, C, H, W] -> [B, H*W] (AT paper eq. (2))."""
    return F.normalize(f.pow(p).mean(1).flatten(1))


class AT(Distiller):
    """Activation-based attention transfer.

    Reference: Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention", eq. (2),
    in the form of the authors' code and RepDistiller: per pair, at(f) = normalize(mean_c f^p)
    with p = 2, loss = mean((at_s - at_t)^2), summed over pairs. Defaults from RepDistiller:
    weight 1000 (`-b 1000`) on every stage output (feat[1:-1], i.e. "stage1".."stageN").
    Pairs of different spatial size are pooled to the smaller (RepDistiller). The paper writes
    the (unsquared) p-norm of the difference of normalised maps; the authors' code and
    RepDistiller (followed here) use the mean squared difference with beta = 1000.
    """

    name = "at"
    default_weight = 1000.0
    ce_weight = 1.0

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
        p: float = 2.0,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        self.student_taps, self.teacher_taps = _pair_taps(
            s_shapes, t_shapes, student_taps, teacher_taps
        )
        self.p = _positive("p", p)

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        total = 0.0
        for s_name, t_name in zip(self.student_taps, self.teacher_taps, strict=True):
            f_s, f_t = _match_spatial(
                _tap(s, s_name, "student"), _tap(t, t_name, "teacher").detach()
            )
            with torch.no_grad():
                a_t = attention_map(f_t, self.p)
            total = total + (attention_map(f_s, self.p) - a_t).pow(2).mean()
        return {"at": self.weight * total}


# ---------------------------------------------------------------------------------------------
# Factor transfer (Kim et al. 2018)
# ---------------------------------------------------------------------------------------------


def _ft_encoder(c_in: int, c_out: int, use_bn: bool) -> nn.Sequential:
    """Three 3x3 convs c_in -> c_in -> c_out -> c_out, each with (optional BN and) LeakyReLU(0.1)."""
    layers: list[nn.Module] = []
    for a, b in ((c_in, c_in), (c_in, c_out), (c_out, c_out)):
        layers += [nn.Conv2d(a, b, 3, 1, 1)]
        layers += [nn.BatchNorm2d(b)] if use_bn else []
        layers += [nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Convolutional autoencoder on the teacher's feature map (RepDistiller's Paraphraser).

    Encoder: three 3x3 convs C -> C -> kC -> kC; decoder: three 3x3 transposed convs
    kC -> kC -> C -> C; LeakyReLU(0.1) after each, no BN by default (as in RepDistiller).
    """

    def __init__(self, channels: int, rate: float = 0.5, use_bn: bool = False) -> None:
        super().__init__()
        factor = int(channels * rate)
        self.encoder = _ft_encoder(channels, factor, use_bn)
        layers: list[nn.Module] = []
        for a, b in ((factor, factor), (factor, channels), (channels, channels)):
            layers += [nn.ConvTranspose2d(a, b, 3, 1, 1)]
            layers += [nn.BatchNorm2d(b)] if use_bn else []
            layers += [nn.LeakyReLU(0.1)]
        self.decoder = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(factor, reconstruction)."""
        factor = self.encoder(x)
        return factor, self.decoder(factor)


def _factor(x: Tensor) -> Tensor:
    """F / ||F||_2 over the whole flattened factor (FT paper eq. (3))."""
    return F.normalize(x.flatten(1))


class FT(Distiller):
    """Factor transfer: match the student's translated factor to the teacher's paraphrased one.

    Reference: Kim, Park & Kwak, NeurIPS 2018, "Paraphrasing Complex Network: Network
    Compression via Factor Transfer". The paraphraser P (an autoencoder on the teacher's last
    feature map, rate k = 0.5) is trained first on the reconstruction loss (`paraphraser_loss`,
    MSE as in RepDistiller's init stage) and then frozen; the translator (three 3x3 conv + BN +
    LeakyReLU, student channels -> k * teacher channels) is trained with the student on
    eq. (3): L_FT = || F_T / ||F_T||_2 - F_S / ||F_S||_2 ||_p, p = 1, taken as the mean absolute
    difference over the flattened factors (nn.L1Loss, as in the authors' code). Weight 200 and the
    last stage output on both sides from RepDistiller (`-b 200`, feat[-2]).

    RepDistiller's FactorTransfer loss instead compares normalize(mean_c factor^2) (an
    attention map of the factor); this class follows the paper. Factors of different spatial
    size are pooled to the smaller (RepDistiller).
    """

    name = "ft"
    default_weight = 200.0
    ce_weight = 1.0

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_tap: str | None = None,
        teacher_tap: str | None = None,
        rate: float = 0.5,
        paraphraser_bn: bool = False,
        translator_bn: bool = True,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        s_tap = student_tap or _last_stage(s_shapes, "student", "student_tap")
        t_tap = teacher_tap or _last_stage(t_shapes, "teacher", "teacher_tap")
        s_c = _shape(s_shapes, s_tap, "student", "student_tap", 3)[0]
        t_c = _shape(t_shapes, t_tap, "teacher", "teacher_tap", 3)[0]
        self.rate = _positive("rate", rate)
        if int(t_c * rate) < 1:
            raise DistillerConfigError("rate", rate, f"leaves no factor channels of {t_c}")
        self.paraphraser = Paraphraser(t_c, rate, use_bn=paraphraser_bn)
        self.translator = _ft_encoder(s_c, int(t_c * rate), translator_bn)
        self.student_taps = (s_tap,)
        self.teacher_taps = (t_tap,)

    def paraphraser_loss(self, t: Taps) -> Tensor:
        """Reconstruction MSE of the paraphraser on the teacher tap (the pre-training stage)."""
        f_t = _tap(t, self.teacher_taps[0], "teacher").detach()
        _, rec = self.paraphraser(f_t)
        return F.mse_loss(rec, f_t)

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(_tap(t, self.teacher_taps[0], "teacher").detach())
        factor_s = self.translator(_tap(s, self.student_taps[0], "student"))
        factor_s, factor_t = _match_spatial(factor_s, factor_t)
        loss = (_factor(factor_s) - _factor(factor_t)).abs().mean()
        return {"ft": self.weight * loss}


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
    pairs, as in RepDistiller, whose defaults are followed: weight 50 (`-b 50`), every stage
    output (feat[1:-1]). The teacher-teacher term is a constant; it is kept so the value is the
    MMD itself.
    """

    name = "nst"
    default_weight = 50.0
    ce_weight = 1.0

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
    last stage output of each side (feat[-2]). Any tap shape works (it is flattened).
    """

    name = "sp"
    default_weight = 3000.0
    ce_weight = 1.0

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
        s_tap = student_tap or _last_stage(s_shapes, "student", "student_tap")
        t_tap = teacher_tap or _last_stage(t_shapes, "teacher", "teacher_tap")
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
    """

    name = "simkd"
    default_weight = 1.0
    ce_weight = 0.0

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


# ---------------------------------------------------------------------------------------------
# Registry and combination
# ---------------------------------------------------------------------------------------------

METHODS: dict[str, type[Distiller]] = {
    cls.name: cls for cls in (KD, LogitStd, FitNets, AT, FT, RKD, NST, SP, DKD, SimKD)
}


def _parameters(cls: type[Distiller]) -> list[str]:
    """The keyword parameters a method accepts (everything after the two shape mappings)."""
    params = inspect.signature(cls.__init__).parameters
    return [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def create_distiller(name: str, s_shapes: Shapes, t_shapes: Shapes, **params: object) -> Distiller:
    """Build the registered method `name` for models with these per-sample tap shapes.

    ValueError (a DistillerConfigError) for an unknown method, an unknown parameter, a missing
    tap or a tap of the wrong rank, naming what is wrong and what is allowed."""
    if name not in METHODS:
        raise DistillerConfigError("method", name, f"one of {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    allowed = _parameters(cls)
    for key in params:
        if key not in allowed:
            raise DistillerConfigError(
                key, params[key], f"not a parameter of {name!r}; allowed: {', '.join(allowed)}"
            )
    return cls(s_shapes, t_shapes, **params)


def combine(
    ce: Tensor, losses: Mapping[str, Tensor], alpha: float | None, *, ce_weight: float = 1.0
) -> Tensor:
    """The training loss from the cross-entropy and a distiller's named losses.

    With `alpha`: (1 - alpha) * ce + alpha * sum(losses), the experiment notes' formula (build the
    distiller with weight=1.0 for the notes' raw distill loss). Without: ce_weight * ce +
    sum(losses), the per-method weights of the reference recipe (pass the distiller's
    `ce_weight` to reproduce it; the default 1 keeps the cross-entropy as is)."""
    distill = sum(losses.values(), torch.zeros((), device=ce.device, dtype=ce.dtype))
    if alpha is None:
        return ce_weight * ce + distill
    if not 0.0 <= alpha <= 1.0:
        raise DistillerConfigError("alpha", alpha, "must be in [0, 1]")
    return (1.0 - alpha) * ce + alpha * distill
