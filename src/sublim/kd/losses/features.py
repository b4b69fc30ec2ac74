"""Methods on intermediate feature maps with learned adapters: FitNets (Romero et al. 2015),
attention transfer (Zagoruyko & Komodakis 2017), factor transfer (Kim et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Distiller,
    DistillerConfigError,
    InitStage,
    Shapes,
    Taps,
    _last_feature,
    _match_spatial,
    _pair_taps,
    _positive,
    _shape,
    _tap,
)

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


def _second_feature(shapes: Shapes, side: str, param: str) -> str:
    """RepDistiller's default hint layer, feat[2]: the second benchmark feature of a model that
    declares its features (a TapShapes), else "stage2"."""
    declared = getattr(shapes, "feature_taps", ())
    if not declared:
        return "stage2"
    if len(declared) < 2:
        raise DistillerConfigError(
            param, None, f"the {side} has one feature tap {declared}; name the tap"
        )
    return declared[1]


class FitNets(Distiller):
    """Hint learning: a regressor maps the student's guided layer onto the teacher's hint layer.

    Reference: Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets", eq. (3):
    L_HT = 1/2 ||u_h(x) - r(v_g(x))||^2, with the hint u_h a teacher hidden layer and the guided
    layer v_g a student hidden layer (the paper's naming: `hint` is the teacher tap, `guided` the
    student tap). Loss and regressor as in RepDistiller: mean squared error (`nn.MSELoss`) after
    `ConvReg` (conv + BN + ReLU), weight 100 (`-b 100`), hint layer 2 on both sides: feat[2],
    the second benchmark feature (see `_feature_taps`: "stage2", or "stage2_pre" on a WRN).
    The paper's first stage (training the student up to the guided layer plus the regressor on
    the hint loss alone) is a training-recipe matter; RepDistiller trains everything jointly.
    `regressor` is exposed for such a stage.
    """

    name = "fitnets"
    default_weight = 100.0
    ce_weight = 1.0
    # the paper's hint stage, off by default (RepDistiller trains jointly): the whole student
    # and the regressor on the raw hint loss
    init_stage = InitStage(epochs=0, student="all")
    param_help: ClassVar[dict[str, str]] = {
        "guided": "the student tap (a C x H x W feature map) the regressor reads, the paper's "
        "guided layer; None: the student's second benchmark feature (RepDistiller's feat[2])",
        "hint": "the teacher tap (a C x H x W feature map) the regressed student map must match, "
        "the paper's hint layer; None: the teacher's second benchmark feature (feat[2])",
        "use_relu": "whether the regressor (conv + BatchNorm) ends with a ReLU, as RepDistiller's "
        "ConvReg does by default",
        "weight": "loss weight of the hint MSE; None: 100, RepDistiller's `-b 100`, or 1 when the "
        "experiment sets `alpha`",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        guided: str | None = None,
        hint: str | None = None,
        use_relu: bool = True,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        guided = guided or _second_feature(s_shapes, "student", "guided")
        hint = hint or _second_feature(t_shapes, "teacher", "hint")
        s_shape = _shape(s_shapes, guided, "student", "guided", 3)
        t_shape = _shape(t_shapes, hint, "teacher", "hint", 3)
        self.regressor = ConvReg(s_shape, t_shape, use_relu=use_relu)
        self.student_taps = (guided,)
        self.teacher_taps = (hint,)

    def hint_loss(self, s: Taps, t: Taps) -> Tensor:
        """The unweighted hint MSE between the regressed guided layer and the hint layer."""
        f_s = self.regressor(_tap(s, self.student_taps[0], "student"))
        f_t = _tap(t, self.teacher_taps[0], "teacher").detach()
        return F.mse_loss(f_s, f_t)

    def init_loss(self, s: Taps, t: Taps) -> Tensor:
        """The hint stage minimises the raw hint loss, whatever the method's weight."""
        return self.hint_loss(s, t)

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        return {"fitnets": self.weight * self.hint_loss(s, t)}


# ---------------------------------------------------------------------------------------------
# Attention transfer (Zagoruyko & Komodakis 2017)
# ---------------------------------------------------------------------------------------------


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """Q = normalize(mean_c |A_c|^p) flattened: [B, C, H, W] -> [B, H*W] (AT paper eq. (2))."""
    return F.normalize(f.pow(p).mean(1).flatten(1))


class AT(Distiller):
    """Activation-based attention transfer.

    Reference: Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention", eq. (2),
    in the form of the authors' code and RepDistiller: per pair, at(f) = normalize(mean_c f^p)
    with p = 2, loss = mean((at_s - at_t)^2), summed over pairs. Defaults from RepDistiller:
    weight 1000 (`-b 1000`) on every benchmark feature (feat[1:-1]: "stage1".."stageN", or the
    raw residual sums "stageK_pre" on a WRN; see `_feature_taps`).
    Pairs of different spatial size are pooled to the smaller (RepDistiller). The paper writes
    the (unsquared) p-norm of the difference of normalised maps; the authors' code and
    RepDistiller (followed here) use the mean squared difference with beta = 1000.
    """

    name = "at"
    default_weight = 1000.0
    ce_weight = 1.0
    param_help: ClassVar[dict[str, str]] = {
        "student_taps": "the student's feature maps, paired in order with `teacher_taps`; None: "
        "every benchmark feature (RepDistiller's feat[1:-1])",
        "teacher_taps": "the teacher's feature maps, as many as `student_taps`; None: every "
        "benchmark feature (feat[1:-1])",
        "p": "exponent of the attention map normalize(mean over channels of f^p) (2: the paper's "
        "and RepDistiller's value)",
        "weight": "loss weight of the summed attention losses; None: 1000, RepDistiller's "
        "`-b 1000`, or 1 when the experiment sets `alpha`",
    }

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


FTFormula = Literal["repdistiller", "authors"]
FT_FORMULAS: tuple[str, ...] = get_args(FTFormula)


class FT(Distiller):
    """Factor transfer: match the student's translated factor to the teacher's paraphrased one.

    Reference: Kim, Park & Kwak, NeurIPS 2018, "Paraphrasing Complex Network: Network
    Compression via Factor Transfer". The paraphraser P (an autoencoder on the teacher's last
    feature map, rate k = 0.5) is trained first on the reconstruction loss (`paraphraser_loss`,
    MSE as in RepDistiller's init stage) and then frozen; the translator (three 3x3 conv + BN +
    LeakyReLU, student channels -> k * teacher channels) is trained with the student.

    `formula` chooses the loss between the two factors (pooled to the smaller spatial size
    first, as in RepDistiller):

    * "repdistiller" (default; the benchmark most papers compare with, RepDistiller's
      `FactorTransfer` with p1 = 2, p2 = 1): the mean absolute difference of the factors'
      attention maps, normalize(mean over channels of factor^2), flattened over H*W;
    * "authors": the paper's eq. (3) as in the FT authors' code,
      L_FT = || F_T / ||F_T||_2 - F_S / ||F_S||_2 ||_1 over the whole flattened factors, taken
      as the mean absolute difference (nn.L1Loss).

    Defaults from RepDistiller: weight 200 (`-b 200`), the last benchmark feature on both sides
    (feat[-2]: "stageN", the raw residual sum "stage3_pre" on a WRN), and the paraphraser
    pre-trained (`--init-epochs`, 30 in RepDistiller) by SGD at a constant learning rate
    `paraphraser_lr` = 0.01 (RepDistiller's value for ResNet and WRN students; for other
    students it uses its main learning rate: 0.01 for MobileNetV2, 0.05 for VGG). None: the
    recipe's `--lr`. The student does not run during that stage (RepDistiller keeps it in eval
    mode), so its BatchNorm statistics are untouched.
    """

    name = "ft"
    default_weight = 200.0
    ce_weight = 1.0
    init_stage = InitStage(epochs=30, student="none")  # the paraphraser alone
    param_help: ClassVar[dict[str, str]] = {
        "student_tap": "the student feature map the translator reads; None: the student's last "
        "benchmark feature (RepDistiller's feat[-2])",
        "teacher_tap": "the teacher feature map the paraphraser encodes; None: the teacher's last "
        "benchmark feature (feat[-2])",
        "rate": "paraphrase rate k: the factor has int(k x teacher channels) channels (0.5: "
        "RepDistiller's value)",
        "paraphraser_bn": "whether the paraphraser's convolutions are followed by BatchNorm (off "
        "in RepDistiller)",
        "translator_bn": "whether the translator's convolutions are followed by BatchNorm (on in "
        "RepDistiller)",
        "formula": "the loss between the factors: repdistiller (mean absolute difference of the "
        "factors' attention maps, RepDistiller's FactorTransfer) or authors (the paper's eq. (3): "
        "L1 between the L2-normalised flattened factors)",
        "paraphraser_lr": "constant SGD learning rate of the paraphraser's pre-training stage "
        "(`--init-epochs`); None: the recipe's `--lr` (0.01: RepDistiller's value for ResNet and "
        "WRN students)",
        "weight": "loss weight of the factor-transfer loss; None: 200, RepDistiller's `-b 200`, "
        "or 1 when the experiment sets `alpha`",
    }

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
        formula: FTFormula = "repdistiller",
        paraphraser_lr: float | None = 0.01,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        if formula not in FT_FORMULAS:
            raise DistillerConfigError("formula", formula, f"one of {', '.join(FT_FORMULAS)}")
        self.formula = formula
        self.paraphraser_lr = (
            None if paraphraser_lr is None else _positive("paraphraser_lr", paraphraser_lr)
        )
        s_tap = student_tap or _last_feature(s_shapes, "student", "student_tap")
        t_tap = teacher_tap or _last_feature(t_shapes, "teacher", "teacher_tap")
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

    def init_loss(self, s: Taps, t: Taps) -> Tensor:
        """The init stage trains the paraphraser on the teacher alone (`s` is not read)."""
        return self.paraphraser_loss(t)

    def init_lr(self, lr: float) -> float:
        """`paraphraser_lr`, or the recipe's lr when it is None."""
        return lr if self.paraphraser_lr is None else self.paraphraser_lr

    def init_parameters(self) -> list[nn.Parameter]:
        return list(self.paraphraser.parameters())

    def main_parameters(self) -> list[nn.Parameter]:
        """Everything but the paraphraser, frozen after its stage."""
        skip = set(map(id, self.paraphraser.parameters()))
        return [p for p in self.parameters() if p.requires_grad and id(p) not in skip]

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(_tap(t, self.teacher_taps[0], "teacher").detach())
        factor_s = self.translator(_tap(s, self.student_taps[0], "student"))
        factor_s, factor_t = _match_spatial(factor_s, factor_t)
        if self.formula == "repdistiller":
            a_s, a_t = attention_map(factor_s, 2.0), attention_map(factor_t, 2.0)
        else:
            a_s, a_t = _factor(factor_s), _factor(factor_t)
        loss = (a_s - a_t).abs().mean()
        return {"ft": self.weight * loss}
