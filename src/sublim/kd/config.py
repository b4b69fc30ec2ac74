"""KDConfig: one classical-distillation experiment (a teacher, or a student distilled from one).

Frozen and validated like ExperimentConfig; its hash names the experiment's directory, so an
identical experiment is recognised and not rerun. The training recipe is configuration: SGD
(lr, momentum, weight decay, Nesterov), cosine or multi-step schedule with linear warm-up,
epochs, batch size, label smoothing, augmentation, mixed precision and channels_last (CUDA).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..config.augmentspec import canonical as canonical_augment
from ..config.augmentspec import parse_augment
from ..errors import ConfigError

KD_DATASETS: dict[str, tuple[int, tuple[int, int, int]]] = {  # classes, input shape
    "cifar10": (10, (3, 32, 32)),
    "cifar100": (100, (3, 32, 32)),
    "svhn": (10, (3, 32, 32)),
    "tinyimagenet": (200, (3, 64, 64)),
    # the MNIST family: gray 28 x 28 images replicated to 3 channels and zero-padded to 32 x 32,
    # so the CIFAR models apply unchanged
    "mnist": (10, (3, 32, 32)),
    "fashion-mnist": (10, (3, 32, 32)),
    "kmnist": (10, (3, 32, 32)),
}
SCHEDULES = ("cosine", "multistep")
DIGITS = ("svhn", "mnist", "kmnist")  # no horizontal flips by default
FLOAT_FIELDS = ("lr", "momentum", "weight_decay", "gamma", "label_smoothing", "alpha")
ROLES = ("teacher", "student")
# The names kd.models and kd.losses register (they check at import that they match), so that
# validating a config needs neither torch nor the model code.
MODEL_NAMES = (
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet112",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg13",
    "mobilenetv2",
    # KD_wo_CE's models (torchvision layouts; they depend on the image size)
    "resnet9",
    "resnet18",
    "resnet34",
    "vgg11_bn",
    "vgg19_bn",
    "mobilenetv2_w1",
    "vit_b",
    "vit_ett",
)
METHOD_NAMES = ("kd", "logit_std", "fitnets", "at", "ft", "rkd", "nst", "sp", "dkd", "simkd")
# Fields that never change results: where to read and write, and how to show progress.
NON_RESULT = frozenset({"data_dir", "outdir", "device", "teacher_checkpoint_path"})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class KDConfig:
    """Every setting of one teacher training or one distillation."""

    role: str = "teacher"  # teacher: plain cross-entropy training; student: distillation
    dataset: str = "cifar100"
    data_dir: str = "./data"
    outdir: str = "outputs/kd"
    device: str = "auto"
    seed: int = 0
    model: str = "resnet56"  # the model trained (the student when role is student)
    teacher: str | None = None  # the teacher's model name (students)
    teacher_checkpoint_path: str | None = None  # default: the matching teacher experiment's best
    # identity of the teacher a student learns from (its experiment's hash, or "sha256:..." of an
    # explicit checkpoint file): part of the student's hash, so a new teacher means a new student
    teacher_hash: str | None = None
    method: str = "none"  # none: the student alone (cross-entropy); else a kd.losses method
    method_params: dict[str, Any] = field(default_factory=dict)
    alpha: float | None = None  # (1 - alpha) * CE + alpha * distill; None: per-method weights
    # FitNets hint stage / FT paraphraser pre-training before `epochs`; None: the method's
    # default (ft: 30 as in RepDistiller; fitnets: 0, trained jointly as in RepDistiller)
    init_epochs: int | None = None
    epochs: int = 150
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    milestones: tuple[int, ...] = (150, 180, 210)
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.1
    augment: str | None = None  # None: crop=4,hflip=0.5 (crop=4 for digits: svhn, mnist, kmnist)
    amp: bool = False  # float16 autocast + GradScaler (CUDA only; no effect on a CPU)
    channels_last: bool = False  # CUDA only
    train_limit: int = 0  # use only the first N training images (0: all); for smoke tests

    def __post_init__(self) -> None:
        for name in FLOAT_FIELDS:  # 0 and 0.0 are one experiment (TOML gives ints, flags floats)
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        if self.role == "student" and self.method == "none":
            # the student alone is a plain cross-entropy training of that model: one experiment
            for name, value in (
                ("role", "teacher"),
                ("teacher", None),
                ("alpha", None),
                ("method_params", {}),
                ("teacher_checkpoint_path", None),
                ("teacher_hash", None),
                ("init_epochs", None),
            ):
                object.__setattr__(self, name, value)
        self._validate()

    def _validate(self) -> None:
        if self.role not in ROLES:
            raise ConfigError("role", self.role, f"allowed: {', '.join(ROLES)}")
        if self.dataset not in KD_DATASETS:
            raise ConfigError("--dataset", self.dataset, f"allowed: {', '.join(KD_DATASETS)}")
        if self.model not in MODEL_NAMES:
            flag = "--model" if self.role == "teacher" else "--student"
            raise ConfigError(flag, self.model, f"allowed: {', '.join(MODEL_NAMES)}")
        if self.role == "student":
            if self.teacher not in MODEL_NAMES:
                raise ConfigError("--teacher", self.teacher, f"allowed: {', '.join(MODEL_NAMES)}")
            if self.method not in ("none", *METHOD_NAMES):
                allowed = ", ".join(("none", *sorted(METHOD_NAMES)))
                raise ConfigError("--method", self.method, f"allowed: {allowed}")
        elif self.method != "none" or self.teacher is not None:
            raise ConfigError("--method", self.method, "a teacher is trained without distillation")
        for name in ("seed", "warmup_epochs", "train_limit"):
            _int(name, getattr(self, name), 0)
        for name in ("epochs", "batch_size"):
            _int(name, getattr(self, name), 1)
        for name in ("lr", "gamma"):
            _number(name, getattr(self, name), positive=True)
        for name in ("momentum", "weight_decay", "label_smoothing"):
            _number(name, getattr(self, name), positive=False)
        if self.label_smoothing >= 1:
            raise ConfigError("--label-smoothing", self.label_smoothing, "expected 0 <= x < 1")
        if self.alpha is not None:
            _number("alpha", self.alpha, positive=False)
            if self.alpha > 1:
                raise ConfigError("--alpha", self.alpha, "expected a number in [0, 1]")
        if self.schedule not in SCHEDULES:
            raise ConfigError("--schedule", self.schedule, f"allowed: {', '.join(SCHEDULES)}")
        if any(not isinstance(m, int) or m < 1 for m in self.milestones):
            raise ConfigError("--milestones", self.milestones, "expected epochs >= 1")
        if not isinstance(self.method_params, dict):
            raise ConfigError("--method-params", self.method_params, "expected a JSON object")
        if self.init_epochs is not None:
            _int("init_epochs", self.init_epochs, 0)
            if self.init_epochs and self.method not in ("fitnets", "ft"):
                raise ConfigError(
                    "--init-epochs",
                    self.init_epochs,
                    "only fitnets (hint stage) and ft (paraphraser)",
                )
        for name in ("nesterov", "amp", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(_flag(name), getattr(self, name), "expected true or false")
        if self.augment is not None and not isinstance(self.augment, str):
            raise ConfigError("--augment", self.augment, "expected text such as crop=4,hflip=0.5")
        parse_augment(self.augmentation)
        if self.schedule == "multistep":
            ms = self.milestones
            if list(ms) != sorted(set(ms)) or (ms and ms[-1] >= self.epochs):
                raise ConfigError(
                    "--milestones", ms, f"expected increasing epochs below --epochs {self.epochs}"
                )

    # ------------------------------------------------------------------ derived facts
    @property
    def init_stage(self) -> int:
        """Epochs of the method's first stage (FT's paraphraser, FitNets' hints)."""
        if self.init_epochs is not None:
            return self.init_epochs
        return 30 if self.method == "ft" else 0

    @property
    def augmentation(self) -> str:
        """The augmentation used: --augment, or the dataset's default (no flips for digits)."""
        if self.augment is not None:
            return self.augment
        return "crop=4" if self.dataset in DIGITS else "crop=4,hflip=0.5"

    @property
    def num_classes(self) -> int:
        return KD_DATASETS[self.dataset][0]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return KD_DATASETS[self.dataset][1]

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def result_dict(self) -> dict[str, Any]:
        """The fields that change the trained model."""
        d = {k: v for k, v in self.to_dict().items() if k not in NON_RESULT}
        d["augment"] = canonical_augment(self.augmentation)
        d["init_epochs"] = self.init_stage
        if self.schedule != "multistep":
            d.pop("milestones")
            d.pop("gamma")
        if self.role == "teacher":
            for k in ("teacher", "teacher_hash", "method", "method_params", "alpha", "init_epochs"):
                d.pop(k)
        return d

    @property
    def config_hash(self) -> str:
        """Canonical hash of the result fields (16 hex digits)."""
        text = json.dumps(self.result_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def teacher_config(self) -> KDConfig:
        """The teacher experiment a student uses by default: same dataset, seed and recipe."""
        recipe = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("teacher", "teacher_hash", "method", "method_params", "alpha", "init_epochs"):
            recipe.pop(k)
        recipe.update(role="teacher", model=self.teacher, teacher_checkpoint_path=None)
        return KDConfig(**recipe)

    def replace(self, **changes: Any) -> KDConfig:
        """A validated copy with some fields changed."""
        return replace(self, **changes)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of main-stage epoch `epoch` (0-based): warm-up, then the schedule."""
        if epoch < self.warmup_epochs:
            return self.lr * (epoch + 1) / (self.warmup_epochs + 1)
        if self.schedule == "cosine":
            t = (epoch - self.warmup_epochs) / max(1, self.epochs - self.warmup_epochs)
            return 0.5 * self.lr * (1 + math.cos(math.pi * t))
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)


def _int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(_flag(name), value, f"expected an integer >= {minimum}")


def _number(name: str, value: Any, positive: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ConfigError(
            _flag(name), value, f"expected a finite number {'>' if positive else '>='} 0"
        )
