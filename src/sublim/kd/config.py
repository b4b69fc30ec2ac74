"""KDConfig: one classical-distillation experiment (a teacher, or a student distilled from one).

Frozen and validated like ExperimentConfig; its hash names the experiment's directory, so an
identical experiment is recognised and not rerun. The training recipe is configuration: SGD
(lr, momentum, weight decay, Nesterov) or AdamW, cosine or multi-step schedule with linear warm-up
or OneCycle stepped per batch, epochs, batch size, label smoothing, augmentation, ImageNet-pretrained
starting weights with a backbone learning-rate multiplier, mixed precision and channels_last
(CUDA; the CPU always runs channels-last).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
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
    # ILSVRC2012 from its folder (train/<wnid>, val/), read as it trains (sublim.data.imagenet):
    # RandomResizedCrop 224 + flip in the reader's workers, resize 256 + centre crop 224 to test
    "imagenet": (1000, (3, 224, 224)),
}
# Datasets decoded from disk batch by batch rather than held in memory (kd.batches): augmented
# by their reader, so --augment does not apply, and without the KD_wo_CE code's behaviours
STREAMED = ("imagenet",)
SCHEDULES = ("cosine", "multistep", "onecycle")
OPTIMIZERS = ("sgd", "adamw")
DIGITS = ("svhn", "mnist", "kmnist")  # no horizontal flips by default
FLOAT_FIELDS = (
    "lr",
    "momentum",
    "weight_decay",
    "gamma",
    "label_smoothing",
    "alpha",
    "pct_start",
    "backbone_lr_mult",
    "ce_weight",
)
ROLES = ("teacher", "student")
# torchvision's ImageNet files for --pretrained (the hex after "-" is their sha256 prefix)
PRETRAINED_FILES = {
    "resnet34": "resnet34-b627a593.pth",
    "vgg19_bn": "vgg19_bn-c79401a0.pth",
    "vit_b": "vit_b_16-c867db91.pth",
    # the files mdistiller's ImageNet teachers load (loaded whole, 1000-way fc included)
    "resnet18_imagenet": "resnet18-5c106cde.pth",
    "resnet34_imagenet": "resnet34-333f7ec4.pth",
    "resnet50_imagenet": "resnet50-19c8e357.pth",
}
POS_LAYOUTS = ("torchvision", "reference")
# The names kd.models and kd.losses register (they check at import that they match), so that
# validating a config needs neither torch nor the model code (method parameters, when a config
# has any, are checked against their declarations in kd.losses.registry).
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
    "shufflev1",
    "shufflev2",
    "resnet50",  # RepDistiller's CIFAR ResNet50
    # KD_wo_CE's models (torchvision layouts; they depend on the image size)
    "resnet9",
    "resnet18",
    "resnet34",
    "vgg11_bn",
    "vgg19_bn",
    "mobilenetv2_w1",
    "vit_b",
    "vit_ett",
    # mdistiller's ImageNet models
    "resnet18_imagenet",
    "resnet34_imagenet",
    "resnet50_imagenet",
    "mobilenetv1",
)
METHOD_NAMES = (
    "kd",
    "logit_std",
    "fitnets",
    "at",
    "ft",
    "rkd",
    "nst",
    "sp",
    "dkd",
    "simkd",
    "fkd",
    "pkt",
    "cc",
    "vid",
    "kdsvd",
    "ofd",
    "reviewkd",
    "ab",
    "fsp",
    "crd",
    "crd_kd",
    "kd_dot",
)
# Methods with an init stage (`--init-epochs`) and its default length: RepDistiller's 30 epochs
# for FT (the paraphraser), AB (connectors and student features) and FSP (student features);
# FitNets' hint stage is off (RepDistiller trains it jointly). kd.losses checks it against
# each method's `init_stage`.
INIT_EPOCHS: dict[str, int] = {"fitnets": 0, "ft": 30, "ab": 30, "fsp": 30}
# Fields that never change results: where to read and write, and how to show progress.
NON_RESULT = frozenset(
    {
        "data_dir",
        "outdir",
        "device",
        "teacher_checkpoint_path",
        "pretrained",
        "label",
        "teacher_layers_requested",
        "workers",
    }
)
# Fields added after experiments were published: left out of the hash at their defaults, so
# existing experiment directories keep their names.
NEW_FIELD_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",
    "pct_start": 0.3,
    "drop_last": False,
    "pretrained_id": None,
    "backbone_lr_mult": 0.01,
    "ce_weight": None,
    "onecycle_plan": "exact",
    "test_limit": 0,
    "vit_pos_layout": "torchvision",
    "eval_batches": "all",
    "teacher_bn_nudge": False,
    "teacher_logits": "online",
    "teacher_seed": None,
    "reference_behaviour": None,
}
EVAL_BATCHES = ("all", "reference")
TEACHER_LOGITS = ("online", "reference")
REFERENCE_BEHAVIOURS = ("kd_wo_ce",)
TRANSFORMERS = ("vit_b", "vit_ett")
# Fields a training does not use when it only evaluates --pretrained weights (epochs = 0): left
# out of such a teacher's hash, so students with different recipes share it
TRAINING_ONLY = (
    *("lr", "momentum", "weight_decay", "nesterov", "optimizer", "schedule", "milestones"),
    *("gamma", "warmup_epochs", "label_smoothing", "augment", "drop_last", "train_limit"),
    *("backbone_lr_mult", "pct_start", "onecycle_plan"),
)
# fields only a distillation has (a teacher or a student alone drops them)
STUDENT_FIELDS = ("teacher_bn_nudge", "teacher_logits", "teacher_seed")
ONECYCLE_PLANS = ("exact", "reference")
# fkd's teacher_layers = "auto:METRIC": the k best teacher layers by a layer-quality metric
# (sublim.geometry.METRICS; KD_wo_CE spec 2.4), resolved by analysing the teacher (kd.autolayers)
AUTO_METRICS = (
    "q",
    "s",
    "i",
    "e",
    "sqrt_ie",
    "q_corrected",
    "s_corrected",
    "i_corrected",
    "sqrt_ie_corrected",
)


def auto_metric(value: Any) -> str | None:
    """The metric of an "auto:METRIC" layer spec, None for anything that is not a string;
    ConfigError for a string that is not a valid auto spec."""
    if not isinstance(value, str):
        return None
    head, _, metric = value.strip().lower().partition(":")
    if head != "auto" or metric not in AUTO_METRICS:
        raise ConfigError(
            "teacher_layers",
            value,
            "a list of generalized-layer indices, or auto:METRIC with METRIC one of "
            + ", ".join(AUTO_METRICS),
        )
    return metric


# Methods whose default behaviour changed after experiments were published (the benchmark's
# features on WRNs for AT, NST, SP, FitNets and FT; RepDistiller's FT formula; logit
# standardisation's CE weight 0.1): the revision enters their hash, so an old experiment is
# never taken for a new one and rerun commands train the corrected method.
METHOD_REVISIONS: dict[str, int] = {
    "at": 2,
    "nst": 2,
    "sp": 2,
    "fitnets": 2,
    "ft": 2,
    "logit_std": 2,
}


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
    # FitNets hint stage / FT paraphraser pre-training / AB's and FSP's feature stage before
    # `epochs`; None: the method's default (INIT_EPOCHS: ft, ab, fsp 30 as in RepDistiller;
    # fitnets 0, trained jointly as in RepDistiller)
    init_epochs: int | None = None
    # main-stage epochs; 0 (a teacher with --pretrained only): no training, the weights are
    # evaluated once and become best.pt as they are (a teacher used as published, e.g. ImageNet)
    epochs: int = 150
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    optimizer: str = (
        "sgd"  # sgd, or adamw (betas 0.9/0.999; --weight-decay is AdamW's decoupled one)
    )
    schedule: str = "cosine"  # cosine | multistep (per epoch) | onecycle (per batch)
    pct_start: float = 0.3  # onecycle: share of the steps spent warming up to --lr
    # onecycle: "exact" plans the steps actually taken; "reference" plans int(N / B + 1) per epoch
    # as the KD_wo_CE code does (one more than it takes, so it never quite reaches the final lr)
    onecycle_plan: str = "exact"
    drop_last: bool = False  # drop the last partial training batch of each epoch
    milestones: tuple[int, ...] = (150, 180, 210)
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.1
    augment: str | None = None  # None: crop=4,hflip=0.5 (crop=4 for digits: svhn, mnist, kmnist)
    amp: bool = False  # float16 autocast + GradScaler (CUDA only; no effect on a CPU)
    channels_last: bool = False  # CUDA: opt in; the CPU always runs channels-last (kd.train)
    train_limit: int = 0  # use only the first N training images (0: all); for smoke tests
    test_limit: int = 0  # evaluate on the first N test images only (0: all); for smoke tests
    # processes decoding a streamed dataset (imagenet); None: min(8, CPU cores); 0 decodes in
    # the training process. Never changes results (each image's crop is seeded on its own)
    workers: int | None = None
    # cross-entropy weight; None: the method's reference weight (1 for a plain training)
    ce_weight: float | None = None
    # ImageNet weights to start from: a torchvision-layout .pth path or "auto" (download); the
    # weights' identity (`pretrained_id`, set when the file is resolved) enters the hash
    pretrained: str | None = None
    # the pretrained weights' identity, set from `pretrained` (the published file's name, which
    # carries its sha256 prefix, or "sha256:" of a local file); never written in a spec
    pretrained_id: str | None = None
    backbone_lr_mult: float = 0.01  # with pretrained weights: lr of the layers before the head
    # ViT position grid from a pretrained file: "torchvision" keeps the class position first;
    # "reference" reproduces the KD_wo_CE code, which takes the last position for it (spec 9.9)
    vit_pos_layout: str = "torchvision"
    # evaluation: "all" test images in batches of 1000, or "reference": the KD_wo_CE code's
    # floor(N / batch) sequential batches of --batch-size (9,984 of 10,000 images at 128); the
    # accuracy over those images, the loss the mean of the batch means
    eval_batches: str = "all"
    # the KD_wo_CE code's one train-mode forward of a zeros batch through the teacher before
    # distilling (it moves every BatchNorm's running statistics once; spec 9.7)
    teacher_bn_nudge: bool = False
    # "online": the teacher's logits on each training batch; "reference": fixed logits from one
    # pass over the training set in order (blocks of --batch-size, each augmented on its own by
    # a draw seeded from the teacher), read by every logit loss, as the KD_wo_CE code's
    teacher_logits: str = "online"
    # the teacher's seed when it is not the student's (None): a fixed seed shares one teacher
    # among all student seeds, as the KD_wo_CE code trains one per dataset and model
    teacher_seed: int | None = None
    # "kd_wo_ce": every reference behaviour of the KD_wo_CE code at once (`reference_fields`)
    reference_behaviour: str | None = None
    # a name for reports (a sweep's condition, e.g. "ours"); never part of the hash
    label: str | None = None
    # the teacher layers as the user wrote them ("auto:q") when they were chosen automatically:
    # reports group by what was asked, not by the per-seed choice; never part of the hash
    teacher_layers_requested: str | None = None

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
        if self.role == "teacher":
            for name in STUDENT_FIELDS:
                object.__setattr__(self, name, NEW_FIELD_DEFAULTS[name])
        if self.teacher_seed is not None and self.teacher_seed == self.seed:
            object.__setattr__(self, "teacher_seed", None)  # the default teacher: one experiment
        if self.reference_behaviour is not None:
            if self.reference_behaviour not in REFERENCE_BEHAVIOURS:
                raise ConfigError(
                    "--reference-behaviour",
                    self.reference_behaviour,
                    f"allowed: {', '.join(REFERENCE_BEHAVIOURS)}",
                )
            defaults = {f.name: f.default for f in fields(self)}
            for name, value in reference_fields(self).items():
                given = getattr(self, name)
                if name not in ("augment", "method_params") and given not in (
                    defaults[name],
                    value,
                ):
                    raise ConfigError(
                        _flag(name),
                        given,
                        f"--reference-behaviour {self.reference_behaviour} sets {value} for this "
                        "run; drop one (or set the items alone, without the switch)",
                    )
                object.__setattr__(self, name, value)
        if self.pretrained is not None and self.pretrained_id is None:
            object.__setattr__(self, "pretrained_id", _pretrained_id(self.model, self.pretrained))
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
        for name in ("seed", "warmup_epochs", "train_limit", "test_limit"):
            _int(name, getattr(self, name), 0)
        _int("batch_size", self.batch_size, 1)
        if self.epochs == 0 and not isinstance(self.epochs, bool):  # evaluate pretrained weights
            if self.role != "teacher" or self.pretrained is None:
                raise ConfigError(
                    "--epochs",
                    0,
                    "0 only evaluates --pretrained weights (a teacher used as published); "
                    "give --pretrained, or epochs >= 1",
                )
        else:
            _int("epochs", self.epochs, 1)
        if self.workers is not None:
            _int("workers", self.workers, 0)
        if self.dataset in STREAMED:
            self._validate_streamed()
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
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("--optimizer", self.optimizer, f"allowed: {', '.join(OPTIMIZERS)}")
        if self.onecycle_plan not in ONECYCLE_PLANS:
            raise ConfigError(
                "--onecycle-plan", self.onecycle_plan, f"allowed: {', '.join(ONECYCLE_PLANS)}"
            )
        _number("pct_start", self.pct_start, positive=True)
        if self.pct_start >= 1:
            raise ConfigError("--pct-start", self.pct_start, "expected a number in (0, 1)")
        if self.schedule == "onecycle" and self.warmup_epochs:
            raise ConfigError(
                "--warmup-epochs", self.warmup_epochs, "onecycle warms up by itself; use 0"
            )
        if self.optimizer == "adamw" and self.nesterov:
            raise ConfigError("--nesterov", True, "only with --optimizer sgd")
        _number("backbone_lr_mult", self.backbone_lr_mult, positive=False)
        if self.ce_weight is not None:
            _number("ce_weight", self.ce_weight, positive=False)
        if self.vit_pos_layout not in POS_LAYOUTS:
            raise ConfigError(
                "--vit-pos-layout", self.vit_pos_layout, f"allowed: {', '.join(POS_LAYOUTS)}"
            )
        for name, value, allowed in (
            ("eval_batches", self.eval_batches, EVAL_BATCHES),
            ("teacher_logits", self.teacher_logits, TEACHER_LOGITS),
        ):
            if value not in allowed:
                raise ConfigError(_flag(name), value, f"allowed: {', '.join(allowed)}")
        if self.teacher_seed is not None:
            _int("teacher_seed", self.teacher_seed, 0)
        if self.eval_batches == "reference" and 0 < self.test_limit < self.batch_size:
            raise ConfigError(
                "--eval-batches",
                "reference",
                f"needs at least one whole batch of test images ({self.batch_size}); "
                f"--test-limit is {self.test_limit}",
            )
        if any(not isinstance(m, int) or m < 1 for m in self.milestones):
            raise ConfigError("--milestones", self.milestones, "expected epochs >= 1")
        if not isinstance(self.method_params, dict):
            raise ConfigError("--method-params", self.method_params, "expected a JSON object")
        if self.role == "student" and self.method_params:
            # every parameter against its declaration (the method's __init__ annotations)
            from .losses.registry import check_method_params  # torch: only with parameters

            check_method_params(self.method, self.method_params)
        if self.method == "fkd":
            auto_metric(self.method_params.get("teacher_layers"))
        if self.method == "kd_dot":  # DOT replaces the optimizer: SGD, two full-precision passes
            if self.optimizer != "sgd":
                raise ConfigError("--optimizer", self.optimizer, "kd_dot (DOT) is SGD-based: sgd")
            if self.amp:
                raise ConfigError(
                    "--amp", True, "kd_dot (DOT's two-pass update) runs without mixed precision"
                )
            if self.schedule == "onecycle" or self.nesterov:  # both rewrite DOT's momentum
                flag, value = (
                    ("--schedule", "onecycle")
                    if self.schedule == "onecycle"
                    else ("--nesterov", True)
                )
                raise ConfigError(flag, value, "kd_dot (DOT) keeps a fixed, plain momentum")
            delta = self.method_params.get("delta", 0.075)
            if isinstance(delta, int | float) and not delta <= self.momentum < 1 - delta:
                raise ConfigError(
                    "--method-params delta",
                    delta,
                    f"DOT's momenta m - delta and m + delta must lie in [0, 1) (m = --momentum "
                    f"{self.momentum:g})",
                )
        if self.method in ("ab", "fsp"):  # their main stage is plain cross-entropy
            if self.alpha is not None:
                raise ConfigError(
                    "--alpha", self.alpha, f"{self.method} trains on CE alone after its init stage"
                )
            if self.init_epochs == 0:
                raise ConfigError(
                    "--init-epochs", 0, f"{self.method} distils only in its init stage: >= 1"
                )
        if self.init_epochs is not None:
            _int("init_epochs", self.init_epochs, 0)
            if self.init_epochs and self.method not in INIT_EPOCHS:
                raise ConfigError(
                    "--init-epochs",
                    self.init_epochs,
                    f"only {', '.join(INIT_EPOCHS)} have an init stage",
                )
        for name in ("nesterov", "amp", "channels_last", "drop_last", "teacher_bn_nudge"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(_flag(name), getattr(self, name), "expected true or false")
        if self.augment is not None and not isinstance(self.augment, str):
            raise ConfigError("--augment", self.augment, "expected text such as crop=4,hflip=0.5")
        parse_augment(self.augmentation)
        if self.schedule == "multistep" and self.epochs:
            ms = self.milestones
            if list(ms) != sorted(set(ms)) or (ms and ms[-1] >= self.epochs):
                raise ConfigError(
                    "--milestones", ms, f"expected increasing epochs below --epochs {self.epochs}"
                )

    def _validate_streamed(self) -> None:
        """What a dataset read from disk as it trains cannot do (see STREAMED)."""
        name = self.dataset
        if self.reference_behaviour is not None:
            raise ConfigError(
                "--reference-behaviour",
                self.reference_behaviour,
                f"the KD_wo_CE code's behaviours apply to the in-memory datasets, not {name}",
            )
        if self.augment is not None:
            raise ConfigError(
                "--augment",
                self.augment,
                f"{name} is augmented by its reader (RandomResizedCrop 224 + flip, torchvision's "
                "recipe); leave --augment out",
            )
        for flag, value, default in (
            ("--teacher-logits", self.teacher_logits, "online"),
            ("--eval-batches", self.eval_batches, "all"),
        ):
            if value != default:
                raise ConfigError(flag, value, f"{name} is read from disk as it trains: {default}")

    # ------------------------------------------------------------------ derived facts
    @property
    def init_stage(self) -> int:
        """Epochs of the method's first stage (FT's paraphraser, FitNets' hints, AB's and FSP's
        feature stage): --init-epochs, else the method's default (`INIT_EPOCHS`)."""
        if self.init_epochs is not None:
            return self.init_epochs
        return INIT_EPOCHS.get(self.method, 0)

    @property
    def augmentation(self) -> str:
        """The augmentation used: --augment, or the dataset's default (no flips for digits;
        "none" on a streamed dataset, whose reader augments)."""
        if self.augment is not None:
            return self.augment
        if self.dataset in STREAMED:  # augmented by the reader (RandomResizedCrop + flip)
            return "none"
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
        if self.schedule != "onecycle":
            d.pop("pct_start")
            d.pop("onecycle_plan")
        if self.optimizer == "adamw":
            d.pop("momentum")
            d.pop("nesterov")
        if self.pretrained_id is None:
            d.pop("backbone_lr_mult")
        for k, default in NEW_FIELD_DEFAULTS.items():
            if k in d and d[k] == default:
                d.pop(k)
        if self.epochs == 0:  # pretrained weights evaluated as they are: no training recipe
            for k in TRAINING_ONLY:
                d.pop(k, None)
            if self.eval_batches != "reference":  # the evaluation's batches do not matter
                d.pop("batch_size")
        if self.role == "teacher":
            for k in ("teacher", "teacher_hash", "method", "method_params", "alpha", "init_epochs"):
                d.pop(k)
        elif self.method in METHOD_REVISIONS:
            d["method_revision"] = METHOD_REVISIONS[self.method]
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
        for k in ("ce_weight", "pretrained", "pretrained_id"):  # the student's own
            recipe.pop(k)
        recipe.update(role="teacher", model=self.teacher, teacher_checkpoint_path=None)
        if self.teacher_seed is not None:  # one teacher for every student seed
            recipe["seed"] = self.teacher_seed
        return KDConfig(**recipe)

    def replace(self, **changes: Any) -> KDConfig:
        """A validated copy with some fields changed."""
        return replace(self, **changes)

    @property
    def stepped_per_batch(self) -> bool:
        """Whether the learning rate changes every batch (onecycle) rather than every epoch."""
        return self.schedule == "onecycle"

    def onecycle_at(self, step: int, steps_per_epoch: int) -> tuple[float, float]:
        """(lr, beta1/momentum) at main-stage batch `step` (0-based) of a OneCycle schedule.

        PyTorch's OneCycleLR with its defaults (cosine annealing, div_factor 25, final_div_factor
        1e4, momentum cycled between 0.85 and 0.95), max_lr = --lr, pct_start = --pct-start, as a
        pure function of the step so that a resumed run continues exactly."""
        per_epoch = steps_per_epoch
        if self.onecycle_plan == "reference":  # the KD_wo_CE code's int(N / B + 1)
            per_epoch = steps_per_epoch + 1
        total = self.epochs * per_epoch
        initial = self.lr / 25.0
        final = initial / 1e4
        end_up = float(self.pct_start * total) - 1
        end_down = float(total - 1)

        def anneal(start: float, end: float, pct: float) -> float:
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

        if step <= end_up:
            pct = step / end_up if end_up > 0 else 1.0
            return anneal(initial, self.lr, pct), anneal(0.95, 0.85, pct)
        pct = (step - end_up) / (end_down - end_up)
        return anneal(self.lr, final, pct), anneal(0.85, 0.95, pct)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of main-stage epoch `epoch` (0-based): warm-up, then the schedule
        (onecycle changes every batch: see `onecycle_at`)."""
        if epoch < self.warmup_epochs:
            return self.lr * (epoch + 1) / (self.warmup_epochs + 1)
        if self.schedule == "onecycle":
            raise ValueError("onecycle changes the lr every batch; use onecycle_at")
        if self.schedule == "cosine":
            t = (epoch - self.warmup_epochs) / max(1, self.epochs - self.warmup_epochs)
            return 0.5 * self.lr * (1 + math.cos(math.pi * t))
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)


def stores_features(config: KDConfig) -> bool:
    """Whether the KD_wo_CE code would precompute (store) this run's teacher features: except on
    TinyImageNet with a CNN teacher, and never with augmentation (its ConfigUtils: StoreFeatures
    on CIFAR and for ViT teachers; datasets it never ran count as CIFAR). Several of its quirks
    hang on it (the BatchNorm nudge, the tail's mode, the ViT view)."""
    augmented = _augments(config)
    return (config.dataset != "tinyimagenet" or config.teacher in TRANSFORMERS) and not augmented


def _augments(config: KDConfig) -> bool:
    """Whether the run's augmentation changes images (batch= and meanfill= alone do not)."""
    aug = parse_augment(config.augmentation)
    return any(aug[k] for k in ("rotate", "translate", "crop", "hflip"))


def reference_fields(config: KDConfig) -> dict[str, Any]:
    """The fields `reference_behaviour = "kd_wo_ce"` sets: every place where sublim departs
    from the KD_wo_CE code, switched to the code's behaviour where it applies to this run.

    Every experiment: OneCycle planned over int(N / B + 1) steps per epoch, the pretrained ViT's
    position grid as the code maps it, evaluation on floor(N / B) batches (9,984 images), and
    the whole-batch augmentation with mean-colour padding when augmenting. Distillations also:
    the teacher's logits precomputed once (`teacher_logits`) where augmentation or the nudge
    would make online ones differ; fkd's quirks: SP's first row, the tail started at the last
    distilled layer, the tail's mode pinned and the projectors' BatchNorm in train mode at test,
    the teacher's BatchNorm nudge and the ViT feature view where the code has them.
    """
    out: dict[str, Any] = {
        "onecycle_plan": "reference",
        "vit_pos_layout": "reference",
        "eval_batches": "reference",
    }
    aug = parse_augment(config.augmentation)
    if _augments(config):
        extra = [f"{k}=1" for k in ("batch", "meanfill") if not aug[k]]
        out["augment"] = ",".join([config.augmentation, *extra])
    if config.role != "student":
        return out
    stored = stores_features(config)
    cnn_teacher = config.teacher not in TRANSFORMERS
    params = dict(config.method_params)
    if config.method == "fkd":
        out["teacher_bn_nudge"] = not stored and cnn_teacher
        if params.get("relation") == "sp":
            params.setdefault("sp_first_row_only", True)
        if params.get("classifier") == "teacher_tail":
            params.setdefault("tail_start", "at")
            params.setdefault("tail_mode", "eval" if stored else "train")
            params.setdefault("projector_bn", "train")
        if stored and not cnn_teacher and params.get("relation", "mse") == "mse":
            params.setdefault("vit_teacher_view", True)
        out["method_params"] = params
    reads_logits = config.method in ("kd", "logit_std", "dkd") or (
        config.method == "fkd" and params.get("logit_loss", "none") != "none"
    )
    if reads_logits and ("augment" in out or out.get("teacher_bn_nudge")):
        out["teacher_logits"] = "reference"
    return out


def _int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(_flag(name), value, f"expected an integer >= {minimum}")


def _number(name: str, value: Any, positive: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ConfigError(
            _flag(name), value, f"expected a finite number {'>' if positive else '>='} 0"
        )


# ------------------------------------------------------------------ presets
# The KD_wo_CE paper's two protocols (spec sections 1.3 and 6.1). The learning rate is the one
# its code really uses (the config's LearningRate: 0.05 for ResNet9 and MobileNetV2 students in
# distillation, 0.01 for VGG11 and ViT_ETT and for every training without a teacher); its
# `MaxLR` field is hashed but never read (spec 9.1), so it is not used here.
_PAPER_LR = {"resnet9": 0.05, "mobilenetv2_w1": 0.05, "vgg11_bn": 0.01, "vit_ett": 0.01}
_PAPER_COMMON: dict[str, Any] = {
    "batch_size": 128,
    "augment": "none",
    "label_smoothing": 0.0,
    "drop_last": True,
}
KD_PRESETS: dict[str, dict[str, Any]] = {
    # 50 epochs, AdamW (weight decay 0.01), OneCycle stepped per batch, pct_start 0.3
    "kd-wo-ce-50e": {
        **_PAPER_COMMON,
        "epochs": 50,
        "optimizer": "adamw",
        "weight_decay": 0.01,
        "schedule": "onecycle",
        "pct_start": 0.3,
    },
    # "+240E": SGD momentum 0.9, weight decay 5e-4, x0.1 at epochs 150, 180, 210 (CRD/SemCKD)
    "kd-wo-ce-240e": {
        **_PAPER_COMMON,
        "epochs": 240,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "multistep",
        "milestones": (150, 180, 210),
        "gamma": 0.1,
    },
}


def preset_fields(name: str, role: str, model: str, method: str = "none") -> dict[str, Any]:
    """The fields preset `name` sets for one experiment (its lr depends on the model and on
    whether it distils); ConfigError for an unknown preset."""
    if name not in KD_PRESETS:
        raise ConfigError("--preset", name, f"allowed: {', '.join(KD_PRESETS)}")
    out = dict(KD_PRESETS[name])
    distils = role == "student" and method != "none"
    out["lr"] = _PAPER_LR.get(model, 0.05) if distils else 0.01
    return out


_FILE_IDS: dict[tuple[str, int, int], str] = {}


def _pretrained_id(model: str, pretrained: Any) -> str:
    """The identity of --pretrained weights, for the hash: the published file's name for
    "auto" (it carries its sha256 prefix), else "sha256:" of the file (cached per size and
    mtime, so a sweep hashes a file once)."""
    if not isinstance(pretrained, str) or not pretrained:
        raise ConfigError("--pretrained", pretrained, "expected a .pth path or auto")
    if model not in PRETRAINED_FILES:
        raise ConfigError(
            "--pretrained",
            pretrained,
            f"ImageNet weights exist for {', '.join(PRETRAINED_FILES)}, not {model}",
        )
    if pretrained == "auto":
        return "torchvision:" + PRETRAINED_FILES[model]
    path = os.path.expanduser(pretrained)
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        if key not in _FILE_IDS:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            _FILE_IDS[key] = "sha256:" + digest.hexdigest()[:16]
    except OSError as exc:
        raise ConfigError(
            "--pretrained", pretrained, f"cannot read it ({exc.strerror or exc}); a .pth or auto"
        ) from None
    return _FILE_IDS[key]
