"""One experiment, start to finish: config in, RunRecord out. Pure compute: writes no files.

Timeline (perturbations apply at their timing; "initial" snapshots and accuracies are taken
after the perturbations of that stage's "before" timing):

 1. build teacher and student from their init sources
 2. before_teacher_training perturbations; teacher initial snapshot and accuracy
 3. teacher training (cross-entropy on class_head)
 4. after_teacher_training, then before_student_training perturbations;
    student initial snapshot, accuracy and aux MSE against the trained teacher
 5. student training (distillation on aux_head over noise)
 6. after_student_training perturbations; final snapshots, accuracies and aux MSE
"""

from __future__ import annotations

import datetime as _dt
import functools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import seeds
from ..config import ExperimentConfig
from ..config.augmentspec import canonical as canonical_augment
from ..config.perturbspec import TIMINGS
from ..data.datasets import ImageData, load_dataset, select_classes
from ..errors import ConfigError
from ..geometry.similarity import RepSummary
from ..models import SplitHeadNet, build_model, model_seed, parameter_counts
from ..records import RunRecord, compact_aliases
from .alloc import release_free_memory, tune_allocator
from .metrics import COMPARISONS, layer_rows, snapshot
from .perturb import apply_perturbations
from .similarity import LayerValues, attach, layer_values, similarity_subset
from .teacher import TeacherState, teacher_key, teacher_view, train_teacher_stage
from .train import (
    Evaluation,
    NoiseNorm,
    Normalizer,
    aux_mse,
    eval_chunk,
    evaluate_keeping,
    kept_forward,
    norm_constants,
    train_student,
)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else cpu; a device this machine lacks is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA"
            raise ConfigError("--device", name, f"this machine has {have}; use cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device", name, "MPS is not available here; use cpu or auto")
    return device


_RAW: dict[tuple[Any, ...], ImageData] = {}  # (dataset, split, data_dir) -> data; <= 2


@functools.lru_cache(maxsize=8)
def _selected(key: tuple[Any, ...], classes: tuple[int, ...] | None) -> ImageData:
    return _RAW[key] if classes is None else select_classes(_RAW[key], classes)


def load_data(config: ExperimentConfig, progress: bool = False) -> ImageData:
    """The config's dataset with its class selection, cached in-process across runs: each
    dataset is read once (`progress` only matters for that first read) and each selection
    made once."""
    key = (config.dataset, config.emnist_split, config.data_dir)
    if config.dataset == "image-folder":
        key += (config.image_size, config.test_fraction)  # type: ignore[assignment]
    if key not in _RAW:
        if len(_RAW) >= 2:
            _RAW.pop(next(iter(_RAW)))
        _RAW[key] = load_dataset(
            key[0],
            key[2],
            emnist_split=key[1],
            progress=progress,
            image_size=config.image_size,
            test_fraction=config.test_fraction,
        )
    return _selected(key, config.selected_classes)


def seed_info(config: ExperimentConfig) -> dict[str, int]:
    """Every derived seed that the outputs record, by purpose."""
    s = config.seed
    return {
        "rng_base": s,
        "teacher_model_seed": model_seed(config, "teacher"),
        "student_model_seed": model_seed(config, "student"),
        "teacher_training_seed": seeds.derive(s, "teacher_training"),
        "student_training_seed": seeds.derive(s, "student_noise"),
        "dataloader_seed": seeds.derive(s, "dataloader"),
    }


@dataclass
class Prepared:
    """A run ready for its student stage: models built and perturbed, initial state measured."""

    config: ExperimentConfig
    data: ImageData
    device: torch.device
    teacher: SplitHeadNet
    student: SplitHeadNet
    norm: Normalizer
    noise_norm: NoiseNorm
    results: dict[str, float]
    snaps: dict[str, Any]
    perturb_rows: list[dict[str, Any]]
    diag: dict[str, Any] = field(default_factory=dict)  # with --diagnostics
    keep: torch.Tensor | None = None  # test rows of the representation similarity (or None)
    similarity: dict[str, LayerValues] = field(default_factory=dict)  # by comparison
    saved: dict[str, Any] = field(default_factory=dict)  # teacher states for --save-models


def prepare(
    config: ExperimentConfig,
    data: ImageData,
    device: torch.device,
    teacher_state: TeacherState,
    shared_reps: dict[tuple[str, int, int], dict[str, RepSummary]] | None = None,
) -> Prepared:
    """Everything before student training (timeline steps 1-4, the teacher from its stage).

    `shared_reps` (a stack's runs): the initial teacher's CKA/RSA summaries by (teacher view,
    seed, subset size), filled here, so runs that learn from one teacher take them once.
    """
    if teacher_state.key != teacher_key(config):
        raise ValueError("teacher_state was trained for another teacher configuration")
    teacher = teacher_state.model(config, device)
    saved: dict[str, Any] = {}
    if config.save_models:  # the teacher as its stage left it, before student-stage perturbations
        from .checkpoint import initial_teacher

        init = teacher_state.init_state or initial_teacher(config, device).state_dict()
        saved = {
            "teacher": {k: v.detach().cpu().clone() for k, v in teacher.state_dict().items()},
            "teacher_init": {k: v.detach().cpu().clone() for k, v in init.items()},
            "teacher_arch": teacher.describe(),
        }
    student = build_model(config, "student", device)
    mean, std = norm_constants(config, data)
    norm = Normalizer(mean, std, device)
    noise_norm = (mean, std) if config.normalize_noise else None
    r: dict[str, float] = dict(teacher_state.metrics)
    snaps: dict[str, Any] = {"teacher_init": teacher_state.snapshot_for(config, teacher)}
    prows = list(teacher_state.perturb_rows)
    # the student is untouched by the teacher stage, so its early perturbations can come now
    for timing in ("before_teacher_training", "after_teacher_training"):
        prows += apply_perturbations(config, student, "student", timing)
    prows += apply_perturbations(config, teacher, "teacher", "before_student_training")
    prows += apply_perturbations(config, student, "student", "before_student_training")
    snaps["student_init"] = snapshot(student)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    keep = similarity_subset(config, test_x.shape[0], device)
    ev = evaluate_keeping(student, test_x, test_y, norm, keep)
    r["student_init_acc"], r["student_init_class_loss"] = ev.acc, ev.loss
    r["student_init_aux_loss"] = aux_mse(config, student, teacher, device, "initial", noise_norm)
    p = Prepared(config, data, device, teacher, student, norm, noise_norm, r, snaps, prows)
    p.saved, p.keep = saved, keep
    if keep is not None:  # the teacher as the student starts to learn from it: kept rows only
        key = (teacher_view(config), config.seed, config.similarity_samples)
        t_reps = None if shared_reps is None else shared_reps.get(key)
        if t_reps is None:
            _, t_reps = kept_forward(teacher, test_x, keep, norm, eval_chunk(teacher))
            if shared_reps is not None:
                shared_reps[key] = t_reps
        p.similarity["teacher_student_init"] = layer_values(t_reps, ev.reps)
    if config.diagnostics:
        from .diagnostics import aux_outputs, eval_noise

        noise = eval_noise(config, device, noise_norm)
        p.diag = {
            "noise": noise,
            "student_aux_init": aux_outputs(student, noise),
            "teacher_history": teacher_state.history,
        }
    return p


def finish(
    p: Prepared,
    config: ExperimentConfig,
    student: SplitHeadNet,
    teacher: SplitHeadNet,
    train_loss_last: float,
    started: float,
    teacher_eval: Evaluation | None = None,
    student_history: list | None = None,
) -> RunRecord:
    """Timeline step 6 on trained models (changed in place by late perturbations) -> record.

    `teacher_eval`: the teacher's evaluation on `p.keep` when the caller already has it (runs
    that share an unperturbed teacher), so it is not computed again.
    """
    device, data, norm = p.device, p.data, p.norm
    r = {**p.results, "student_train_aux_loss_last": train_loss_last}
    prows = list(p.perturb_rows)
    prows += apply_perturbations(config, teacher, "teacher", "after_student_training")
    prows += apply_perturbations(config, student, "student", "after_student_training")
    snaps = {**p.snaps, "teacher_final": snapshot(teacher), "student_final": snapshot(student)}
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    if teacher_eval is None or any(
        q.target == "teacher" and q.timing == "after_student_training" for q in config.perturb
    ):
        teacher_eval = evaluate_keeping(teacher, test_x, test_y, norm, p.keep)
    r["teacher_final_acc"], r["teacher_final_class_loss"] = teacher_eval.acc, teacher_eval.loss
    ev = evaluate_keeping(student, test_x, test_y, norm, p.keep)
    r["student_final_acc"], r["student_final_class_loss"] = ev.acc, ev.loss
    similarity = dict(p.similarity)
    if p.keep is not None:
        similarity["teacher_student_final"] = layer_values(teacher_eval.reps, ev.reps)
    r["student_final_aux_loss"] = aux_mse(config, student, teacher, device, "final", p.noise_norm)
    order = {t: i for i, t in enumerate(TIMINGS)}
    prows.sort(key=lambda row: order[row["timing"]])  # stable: spec order within a timing
    diagnostics = None
    if config.diagnostics and p.diag:
        from .diagnostics import collect

        diagnostics = collect(
            config,
            data,
            device,
            norm,
            teacher,
            student,
            p.diag["noise"],
            p.diag["student_aux_init"],
            p.diag["teacher_history"],
            student_history or [],
        )
    return _record(
        config,
        data,
        device,
        r,
        snaps,
        prows,
        teacher,
        student,
        started,
        diagnostics,
        p.saved,
        similarity,
    )


def run(
    config: ExperimentConfig,
    progress: bool = False,
    teacher_state: TeacherState | None = None,
) -> RunRecord:
    """Run one experiment and return its rows (nothing is written; see sublim.store).

    `teacher_state` (from `train_teacher_stage` for a config with the same `teacher_key`) skips
    the teacher stage; the rows are the same as without it.
    """
    started = time.perf_counter()
    tune_allocator()  # no page-fault storm from freed conv buffers (see engine.alloc)
    device = resolve_device(config.device)
    if teacher_state is None and config.teacher_checkpoint is not None:
        teacher_state = train_teacher_stage(config, None, device)  # checked before any data load
    data = load_data(config, progress)
    if teacher_state is None:
        teacher_state = train_teacher_stage(config, data, device, progress)
    p = prepare(config, data, device, teacher_state)
    release_free_memory()  # the evaluations' buffers, before the training steps' own
    recorder = None
    if config.diagnostics:
        from .diagnostics import EpochRecorder

        recorder = EpochRecorder(p.student, data, p.norm, device)
    loss = train_student(config, p.student, p.teacher, device, p.noise_norm, progress, recorder)
    history = None if recorder is None else recorder.rows
    return finish(p, config, p.student, p.teacher, loss, started, student_history=history)


def _record(
    config: ExperimentConfig,
    data: ImageData,
    device: torch.device,
    results: dict[str, float],
    snaps: dict[str, Any],
    perturb_rows: list[dict[str, Any]],
    teacher: SplitHeadNet,
    student: SplitHeadNet,
    started: float,
    diagnostics: dict[str, Any] | None = None,
    saved: dict[str, Any] | None = None,
    similarity: dict[str, LayerValues] | None = None,
) -> RunRecord:
    timestamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    run_id = f"{timestamp[:19].replace(':', '').replace('-', '')}-{uuid.uuid4().hex[:10]}"
    layer: list[dict[str, Any]] = []
    for comparison, (rm, rs, om, os_) in COMPARISONS.items():
        layer += layer_rows(comparison, snaps[f"{rm}_{rs}"], snaps[f"{om}_{os_}"])
    attach(layer, similarity or {})
    common = {
        "run_id": run_id,
        "seed": config.seed,
        "sweep_name": config.sweep_name,
        "run_label": config.run_label,
    }
    row = _run_row(config, data, device, results, teacher, student, layer)
    row.update(run_id=run_id, timestamp=timestamp)
    artifacts: dict[str, bytes] = {}
    if config.save_models:
        from .checkpoint import model_bundles

        bundles = model_bundles(config, saved or {}, student, results)
        artifacts = {f"models/{run_id}/{name}": data for name, data in bundles.items()}
        row["models_dir"] = f"seed_{config.seed:06d}/models/{run_id}"
    if diagnostics is not None:
        from .diagnostics import diagnostics_npz

        artifacts[f"diagnostics/{run_id}.npz"] = diagnostics_npz(diagnostics)
    row["runtime_seconds"] = time.perf_counter() - started
    layer_metrics = [{**common, **lr_, "config_hash": config.config_hash} for lr_ in layer]
    perturbations = [{**common, **p, "config_hash": config.config_hash} for p in perturb_rows]
    return RunRecord(
        seed=config.seed,
        run=row,
        layer_metrics=layer_metrics,
        perturbations=perturbations,
        config=_config_line(config, run_id, timestamp, teacher, student),
        artifacts=artifacts,
    )


def _run_row(
    config: ExperimentConfig,
    data: ImageData,
    device: torch.device,
    results: dict[str, float],
    teacher: Any,
    student: Any,
    layer: list[dict[str, Any]],
) -> dict[str, Any]:
    c = config
    t_total, t_train = parameter_counts(teacher)
    s_total, s_train = parameter_counts(student)
    resolved = c.resolved_layer_configs
    row: dict[str, Any] = {
        "run_id": "",
        "timestamp": "",
        "runtime_seconds": 0.0,
        "sweep_name": c.sweep_name,
        "run_label": c.run_label,
        "seed": c.seed,
        **seed_info(c),
        "condition": c.condition,
        "torch_version": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "dataset": c.dataset,
        "emnist_split": c.emnist_split if c.dataset == "emnist" else "",
        "train_size": int(data.train_x.shape[0]),
        "test_size": int(data.test_x.shape[0]),
        "num_classes": c.num_classes,
        "data_dir": c.data_dir,
        "outdir": c.outdir,
        "teacher_type": c.teacher_type,
        "student_type": c.student_type,
        "teacher_hidden_dims": list(c.teacher_hidden_dims),
        "student_hidden_dims": list(c.student_hidden_dims),
        "teacher_arch_description": teacher.describe(),
        "student_arch_description": student.describe(),
        "teacher_layer_names": c.layer_names("teacher"),
        "student_layer_names": c.layer_names("student"),
        "m": c.m,
        "teacher_epochs": c.teacher_epochs,
        "student_epochs": c.student_epochs,
        "data_bsize": c.data_bsize,
        "noise_bsize": c.noise_bsize,
        "noise_steps": c.noise_steps,
        "teacher_lr": c.teacher_lr,
        "student_lr": c.student_lr,
        "noise_dist": c.noise_dist,
        "perlin_res": c.perlin_res,
        "normalize_noise": c.normalize_noise,
        "eval_noise_batches": c.eval_noise_batches,
        "eval_noise_bsize": c.eval_noise_bsize,
        "teacher_init_config": resolved["teacher_init"],
        "student_init_config": resolved["student_init"],
        "teacher_trainable_config": resolved["teacher_trainable"],
        "student_trainable_config": resolved["student_trainable"],
        "perturb_specs": [p.to_dict() for p in c.perturb],
        "teacher_total_parameters": t_total,
        "student_total_parameters": s_total,
        "teacher_trainable_parameters": t_train,
        "student_trainable_parameters": s_train,
        **results,
        "class_count": c.class_count,
        "class_selection": c.class_selection,
        "base_num_classes": c.base_num_classes,
    }
    row.update(compact_aliases(layer))
    row.update(
        config_hash=c.config_hash,
        classes=list(c.selected_classes) if c.selected_classes else None,
        distill_loss=c.distill_loss,
        temperature=c.temperature,
        head_layout=c.head_layout,
        init_scheme=c.init_scheme,
        noise_pool=c.noise_pool,
        data_mean=list(c.data_mean) if c.data_mean is not None else None,
        data_std=list(c.data_std) if c.data_std is not None else None,
        augment=canonical_augment(c.augment),
        teacher_checkpoint=c.teacher_checkpoint,
        similarity_samples=c.similarity_samples,
        image_size=c.image_size if c.dataset == "image-folder" else None,
        test_fraction=c.test_fraction if c.dataset == "image-folder" else None,
    )
    return row


def _config_line(
    config: ExperimentConfig, run_id: str, timestamp: str, teacher: Any, student: Any
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "timestamp": timestamp,
        "config_hash": config.config_hash,
        "effective_config": config.to_dict(),
        **{f"resolved_{k}": v for k, v in config.resolved_layer_configs.items()},
        "teacher_arch_description": teacher.describe(),
        "student_arch_description": student.describe(),
        "teacher_arch_spec": config.arch_spec("teacher"),
        "student_arch_spec": config.arch_spec("student"),
        "seed_info": seed_info(config),
    }
