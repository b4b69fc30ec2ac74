"""The teacher stage, separable so that runs sharing a teacher train it once.

A teacher is identified by the fields that affect its trained state (`teacher_key`): dataset and
classes, its architecture, init and trainability, its training hyperparameters, the seed and the
perturbations that touch it before the student stage. Not `m`: only the class head is trained
on labels, so the teacher's aux head is its initialisation, rebuilt per run for that run's m
(unless a teacher perturbation touches the aux head; then `m` is part of the key).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import torch

from ..config import ExperimentConfig
from ..config.augmentspec import canonical as canonical_augment
from ..data.datasets import ImageData
from ..models import SplitHeadNet, build_model
from .alloc import tune_allocator
from .metrics import Snapshot, snapshot
from .perturb import apply_perturbations
from .train import Normalizer, evaluate, norm_constants, train_teacher

TEACHER_TIMINGS = ("before_teacher_training", "after_teacher_training")


def _aux_touched(config: ExperimentConfig) -> bool:
    """Whether the cached teacher must keep its aux head: a teacher-stage perturbation changes
    it, or it is part of the single `head` layer (then the cache holds the whole head)."""
    if config.head_layout == "single" or config.teacher_checkpoint is not None:
        return True
    return any(
        p.target == "teacher"
        and p.timing in TEACHER_TIMINGS
        and (p.layers == ("all",) or "aux_head" in p.layers)
        for p in config.perturb
    )


def teacher_key(config: ExperimentConfig) -> str:
    """Hash of everything the trained teacher depends on (16 hex digits)."""
    resolved = config.resolved_layer_configs
    fields: dict[str, Any] = {
        "dataset": config.dataset,
        "emnist_split": config.emnist_split if config.dataset == "emnist" else None,
        "classes": config.selected_classes,
        "type": config.teacher_type,
        "hidden_dims": config.teacher_hidden_dims,
        "arch": config.arch_spec("teacher"),
        "init": resolved["teacher_init"],
        "trainable": {k: v for k, v in resolved["teacher_trainable"].items() if k != "aux_head"},
        "epochs": config.teacher_epochs,
        "bsize": config.data_bsize,
        "lr": config.teacher_lr,
        "seed": config.seed,
        "perturb": [
            (i, p.to_dict())
            for i, p in enumerate(config.perturb)
            if p.target == "teacher" and p.timing in TEACHER_TIMINGS
        ],
        "m": config.m if _aux_touched(config) else None,
    }
    if config.teacher_checkpoint is not None:
        fields["checkpoint"] = config.teacher_checkpoint
    if canonical_augment(config.augment):
        fields["augment"] = canonical_augment(config.augment)
    if config.dataset == "image-folder":
        fields["folder"] = (config.image_size, config.test_fraction, config.folder_fingerprint)
    for name, default in (("head_layout", "split"), ("init_scheme", "torch-default")):
        if getattr(config, name) != default:  # keys of existing teacher caches stay valid
            fields[name] = getattr(config, name)
    if config.data_mean is not None:
        fields["norm"] = (config.data_mean, config.data_std)
    text = json.dumps(fields, sort_keys=True, default=list, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def teacher_view(config: ExperimentConfig) -> str:
    """The teacher a student learns from: its trained teacher and the teacher's
    before_student_training perturbations (runs with the same view share its features)."""
    early = [
        (i, p.to_dict())
        for i, p in enumerate(config.perturb)
        if p.target == "teacher" and p.timing == "before_student_training"
    ]
    return teacher_key(config) + json.dumps(early, sort_keys=True)


@dataclass
class TeacherState:
    """A trained teacher and what the teacher stage measured (all on the CPU)."""

    key: str
    state: dict[str, torch.Tensor]
    init_snapshot: Snapshot
    metrics: dict[str, float]  # teacher_init_acc, teacher_init_class_loss, teacher_train_loss_last
    perturb_rows: list[dict[str, Any]]
    includes_aux: bool
    history: list[tuple[float, float, float]] | None = None  # per epoch, with --diagnostics
    init_state: dict[str, torch.Tensor] | None = None  # a checkpoint teacher's real initial state

    def to_bytes(self) -> bytes:
        """Serialised form for the on-disk cache (loadable with weights_only=True)."""
        buf = io.BytesIO()
        torch.save(self.__dict__, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TeacherState:
        return cls(**torch.load(io.BytesIO(data), weights_only=True))

    def model(self, config: ExperimentConfig, device: torch.device) -> SplitHeadNet:
        """The trained teacher for `config`: cached layers, aux head rebuilt for its m."""
        net = build_model(config, "teacher", device)
        state = self.state
        if not self.includes_aux:
            state = {**state, **{k: v for k, v in net.state_dict().items() if ".aux_head." in k}}
        net.load_state_dict(state)
        return net

    def snapshot_for(self, config: ExperimentConfig, net: SplitHeadNet) -> Snapshot:
        """The teacher's initial snapshot, with the aux head of this run's m."""
        if self.includes_aux:
            return self.init_snapshot
        return {**self.init_snapshot, "aux_head": snapshot(net)["aux_head"]}


def train_teacher_stage(
    config: ExperimentConfig, data: ImageData | None, device: torch.device, progress: bool = False
) -> TeacherState:
    """Build, perturb, evaluate and train the teacher of `config` (or load its checkpoint)."""
    tune_allocator()
    if config.teacher_checkpoint is not None:
        from .checkpoint import TEACHER_METRICS, load_teacher_checkpoint

        loaded = load_teacher_checkpoint(config, device)
        metrics = {k: loaded["metrics"].get(k, float("nan")) for k in TEACHER_METRICS}
        return TeacherState(
            teacher_key(config),
            loaded["state"],
            loaded["init"],
            metrics,
            [],
            True,
            init_state=loaded["init_state"],
        )
    if data is None:
        raise ValueError("train_teacher_stage needs data unless the config names a checkpoint")
    teacher = build_model(config, "teacher", device)
    norm = Normalizer(*norm_constants(config, data), device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    rows = apply_perturbations(config, teacher, "teacher", "before_teacher_training")
    init = snapshot(teacher)
    metrics: dict[str, float] = {}
    metrics["teacher_init_acc"], metrics["teacher_init_class_loss"] = evaluate(
        teacher, test_x, test_y, norm
    )
    recorder = None
    if config.diagnostics:
        from .diagnostics import EpochRecorder

        recorder = EpochRecorder(teacher, data, norm, device)
    metrics["teacher_train_loss_last"] = train_teacher(
        config, teacher, data.train_x.to(device), data.train_y.to(device), norm, progress, recorder
    )
    rows += apply_perturbations(config, teacher, "teacher", "after_teacher_training")
    includes_aux = _aux_touched(config)
    state = {
        k: v.detach().cpu().clone()
        for k, v in teacher.state_dict().items()
        if includes_aux or ".aux_head." not in k
    }
    if not includes_aux:
        init = {k: v for k, v in init.items() if k != "aux_head"}
    history = None if recorder is None else recorder.rows
    return TeacherState(teacher_key(config), state, init, metrics, rows, includes_aux, history)
