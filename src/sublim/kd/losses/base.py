"""The Distiller base class, its configuration error and the helpers the methods share."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError

Shapes = Mapping[str, Sequence[int]]
Taps = Mapping[str, Tensor]


class DistillerConfigError(ConfigError, ValueError):
    """A bad method name, parameter or tap. A ValueError, and a UserError the CLI prints."""


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------

_STAGE = re.compile(r"^stage(\d+)$")


class TapShapes(dict[str, tuple[int, ...]]):
    """One model's per-sample tap shapes, plus which taps are its benchmark features.

    A plain mapping for every method; `feature_taps` (the model's `TapNet.feature_taps`: what
    RepDistiller's `forward(is_feat=True)` returns as feat[1:-1]) is what the feature methods
    read when no tap is named. A plain dict of shapes works too: its features are then the
    post-activation "stage1".."stageN" taps. Models stay out of this package: build one with
    `TapShapes.of(model, in_shape)`, which only reads `tap_shapes` and `feature_taps`.
    """

    def __init__(
        self, shapes: Shapes, feature_taps: Sequence[str] = (), preact_taps: Sequence[str] = ()
    ) -> None:
        super().__init__((k, tuple(int(d) for d in v)) for k, v in shapes.items())
        missing = [t for t in (*feature_taps, *preact_taps) if t not in self]
        if missing:
            raise ValueError(f"feature taps {missing} are not among the taps {sorted(self)}")
        self.feature_taps: tuple[str, ...] = tuple(feature_taps)
        self.preact_taps: tuple[str, ...] = tuple(preact_taps)

    @classmethod
    def of(cls, model: object, in_shape: tuple[int, int, int] = (3, 32, 32)) -> TapShapes:
        """The tap shapes of a `TapNet` for inputs of `in_shape`, with its feature and
        pre-activation taps."""
        shapes = model.tap_shapes(in_shape)  # type: ignore[attr-defined]
        return cls(shapes, getattr(model, "feature_taps", ()), getattr(model, "preact_taps", ()))


def _stage_taps(shapes: Shapes) -> list[str]:
    """The post-activation stage outputs 'stage1'..'stageN' present in `shapes`, in order."""
    found = [(int(m.group(1)), k) for k in shapes if (m := _STAGE.match(k))]
    return [k for _, k in sorted(found)]


def _last_stage(shapes: Shapes, side: str, param: str) -> str:
    """The deepest post-activation 'stageN' tap: the map the classifier pools (SimKD)."""
    stages = _stage_taps(shapes)
    if not stages:
        raise DistillerConfigError(
            param, None, f"the {side} has no 'stageN' tap (taps: {sorted(shapes)}); name one"
        )
    return stages[-1]


def _feature_taps(shapes: Shapes) -> list[str]:
    """The benchmark's intermediate features (RepDistiller's feat[1:-1]), in order: the model's
    declared `feature_taps` when `shapes` is a TapShapes that has them, else 'stage1'..'stageN'.

    They differ on WRNs, whose benchmark features are the raw residual sums ('stageK_pre'),
    not the BN-ReLU after them."""
    declared = getattr(shapes, "feature_taps", ())
    return list(declared) if declared else _stage_taps(shapes)


def _preact_taps(shapes: Shapes, side: str, param: str) -> list[str]:
    """The benchmark's features before their final activation (RepDistiller's preact=True
    feat[1:-1]): the model's declared `preact_taps`, else 'stageK_pre' for every 'stageK'
    feature tap that has one. DistillerConfigError when the model has none."""
    declared = getattr(shapes, "preact_taps", ())
    if declared:
        return list(declared)
    pre = [f"{k}_pre" for k in _stage_taps(shapes)]
    if pre and all(k in shapes for k in pre):
        return pre
    raise DistillerConfigError(
        param,
        None,
        f"needs pre-activation taps, but the {side} has none (taps: {sorted(shapes)})",
    )


def _last_feature(shapes: Shapes, side: str, param: str) -> str:
    """The deepest benchmark feature: RepDistiller's feat[-2], the last map before pooling."""
    features = _feature_taps(shapes)
    if not features:
        raise DistillerConfigError(
            param, None, f"the {side} has no 'stageN' tap (taps: {sorted(shapes)}); name one"
        )
    return features[-1]


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


def _wide(x: Tensor) -> Tensor:
    """At least float32: 16-bit (mixed-precision) features are reduced in float32, float64 stays."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


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


@dataclass(frozen=True)
class InitStage:
    """A method's first training stage, run for `--init-epochs` before the main one (RepDistiller's
    helper/pretrain.py::init): SGD or AdamW as configured, at the constant lr
    `Distiller.init_lr`, on `Distiller.init_loss`, updating `Distiller.init_parameters()` and,
    per `student`, the student."""

    # default number of epochs (kd.config.INIT_EPOCHS holds the same, to validate without torch)
    epochs: int
    # what of the student the stage trains: "none" (the student does not run), "features"
    # (everything but its classifier head, which runs in eval mode and keeps its weights:
    # RepDistiller's get_feat_modules) or "all" (the whole student in train mode)
    student: Literal["none", "features", "all"]


class Distiller(nn.Module):
    """One distillation method: reads student and teacher taps by name, returns named losses.

    Subclasses set `name`, `default_weight` and `ce_weight`, and in `__init__` the instance's
    `student_taps` / `teacher_taps` (the taps it reads, so models compute only those).
    """

    name: ClassVar[str] = ""
    default_weight: ClassVar[float] = 1.0  # the reference recipe's loss weight
    ce_weight: ClassVar[float] = 1.0  # the reference recipe's cross-entropy weight
    # parameter -> its meaning, one line each (the documentation's methods page reads it; a test
    # holds every keyword-only parameter of `__init__` to having one)
    param_help: ClassVar[dict[str, str]] = {
        "weight": "loss weight multiplying the method's loss terms; None: the method's reference "
        "weight (`default_weight`), or 1 when the experiment sets `alpha`",
    }
    # whether the student's logits come from the distiller (`tail_logits`), not its own head
    uses_tail: bool = False
    # the method's first stage (`InitStage`), None when it has none
    init_stage: ClassVar[InitStage | None] = None
    # whether the main stage after the init stage is plain cross-entropy (RepDistiller's AB and
    # FSP): the loop then neither calls `forward` nor runs the teacher there
    ce_only_main: ClassVar[bool] = False
    # the teacher's mode during training steps (the loop sets it each epoch; its forward stays
    # under no_grad): "eval" (running BN statistics, the benchmarks' default) or "train" (batch
    # statistics, as mdistiller's OFD and ReviewKD's official code run it)
    teacher_mode: str = "eval"
    # whether `forward` needs each batch's positions in the training set: the loop then passes
    # them as `index=` with the batch's number in the epoch as `step=` (CRD's memory banks)
    needs_index: ClassVar[bool] = False
    # DOT (mdistiller's distillation-oriented trainer): the momentum split delta when the method
    # is optimised by `kd.dot.DOT`, two backward passes per step; None: one pass, plain SGD
    dot_delta: float | None = None
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

    def bind_teacher(self, teacher: nn.Module) -> None:
        """Read what the method needs from the trained teacher model itself, not only its
        shapes (OFD's margins); the loop calls it once the teacher's weights are loaded. Default:
        nothing."""

    def bind_data(self, train_y: Tensor, seed: int) -> None:
        """Read what the method needs from the training set (CRD: its labels, which size the
        memory banks and index the classes for the sampler; `seed` is the experiment's); the
        loop calls it before training or resuming. Default: nothing."""

    def init_loss(self, s: Taps, t: Taps) -> Tensor:  # pragma: no cover - abstract
        """The unweighted loss the init stage minimises (methods with an `init_stage`)."""
        raise NotImplementedError

    def init_lr(self, lr: float) -> float:
        """The init stage's constant learning rate given the recipe's --lr (default: that lr)."""
        return lr

    def init_parameters(self) -> list[nn.Parameter]:
        """The method's own parameters the init stage trains (default: every trainable one)."""
        return [p for p in self.parameters() if p.requires_grad]

    def main_parameters(self) -> list[nn.Parameter]:
        """The method's own parameters the main stage trains: every trainable one, none when
        the main stage is plain cross-entropy (`ce_only_main`)."""
        return [] if self.ce_only_main else [p for p in self.parameters() if p.requires_grad]

    def extra_parameters(self) -> int:
        """Number of parameters the method adds (regressors, projectors, ...), as in mdistiller."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, student_taps={self.student_taps}, "
            f"teacher_taps={self.teacher_taps}"
        )


def _pair_taps(
    s_shapes: Shapes,
    t_shapes: Shapes,
    student_taps: Sequence[str] | None,
    teacher_taps: Sequence[str] | None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Student/teacher tap pairs; None means every benchmark feature (RepDistiller's feat[1:-1],
    see `_feature_taps`)."""
    for param, value in (("student_taps", student_taps), ("teacher_taps", teacher_taps)):
        if isinstance(value, str):
            raise DistillerConfigError(
                param, value, "a sequence of tap names, e.g. ('stage1', 'stage2')"
            )
    s_taps = tuple(_feature_taps(s_shapes) if student_taps is None else student_taps)
    t_taps = tuple(_feature_taps(t_shapes) if teacher_taps is None else teacher_taps)
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
