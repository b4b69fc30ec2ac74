"""Column lists of the result files, in the reference order (spec/REFERENCE.md).

Column names and their order are a contract with users' analysis scripts, so they live here
once and every writer and reader takes them from this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..records import (
    ALIAS_COMPARISONS,
    ALIAS_HEADS,
    ALIAS_METRICS,
    ALIAS_TENSORS,
    LAYER_METRIC_VALUES,
    LAYER_REPRESENTATION_VALUES,
    alias_column,
    compact_aliases,
)

__all__ = [
    "ALIAS_COMPARISONS",
    "ALIAS_HEADS",
    "ALIAS_METRICS",
    "ALIAS_TENSORS",
    "alias_column",
    "compact_aliases",
]

SCHEMA_VERSION = 1

RUNS_BASE_COLUMNS: list[str] = [
    "schema_version",
    "run_id",
    "timestamp",
    "runtime_seconds",
    "sweep_name",
    "run_label",
    "seed",
    "rng_base",
    "teacher_model_seed",
    "student_model_seed",
    "teacher_training_seed",
    "student_training_seed",
    "dataloader_seed",
    "torch_version",
    "cuda_available",
    "device",
    "dataset",
    "emnist_split",
    "train_size",
    "test_size",
    "num_classes",
    "data_dir",
    "outdir",
    "teacher_type",
    "student_type",
    "teacher_hidden_dims",
    "student_hidden_dims",
    "teacher_arch_description",
    "student_arch_description",
    "teacher_layer_names",
    "student_layer_names",
    "m",
    "teacher_epochs",
    "student_epochs",
    "data_bsize",
    "noise_bsize",
    "noise_steps",
    "teacher_lr",
    "student_lr",
    "noise_dist",
    "perlin_res",
    "normalize_noise",
    "eval_noise_batches",
    "eval_noise_bsize",
    "teacher_init_config",
    "student_init_config",
    "teacher_trainable_config",
    "student_trainable_config",
    "perturb_specs",
    "teacher_total_parameters",
    "student_total_parameters",
    "teacher_trainable_parameters",
    "student_trainable_parameters",
    "teacher_init_acc",
    "teacher_final_acc",
    "student_init_acc",
    "student_final_acc",
    "teacher_init_class_loss",
    "teacher_final_class_loss",
    "student_init_class_loss",
    "student_final_class_loss",
    "student_init_aux_loss",
    "student_final_aux_loss",
    "teacher_train_loss_last",
    "student_train_aux_loss_last",
    "class_count",
    "class_selection",
    "base_num_classes",
]


# Nesting, outermost first: comparison, head, tensor, metric. So the three metrics of one
# tensor sit side by side (cos, rel_fro, diff_norm), as REFERENCE.md lists them.
COMPACT_ALIAS_COLUMNS: list[str] = [
    alias_column(metric, comparison, head, tensor)
    for comparison in ALIAS_COMPARISONS
    for head in ALIAS_HEADS
    for tensor in ALIAS_TENSORS
    for metric in ALIAS_METRICS
]

RUNS_COLUMNS: list[str] = RUNS_BASE_COLUMNS + COMPACT_ALIAS_COLUMNS

LAYER_METRICS_COLUMNS: list[str] = [
    "schema_version",
    "run_id",
    "seed",
    "sweep_name",
    "run_label",
    "comparison",
    "reference_model",
    "other_model",
    "reference_state",
    "other_state",
    "layer_name",
    "tensor_kind",
    "reference_shape",
    "other_shape",
    "status",
    *LAYER_METRIC_VALUES,
    *LAYER_REPRESENTATION_VALUES,
]

PERTURBATION_STAT_FIELDS: tuple[str, ...] = (
    "delta_norm",
    "before_norm",
    "after_norm",
    "delta_rel",
    "before_after_cosine",
)

PERTURBATION_COLUMNS: list[str] = [
    "schema_version",
    "run_id",
    "seed",
    "sweep_name",
    "run_label",
    "timing",
    "target",
    "layer_name",
    "std",
    "include_weight",
    "include_bias",
    "distribution",
    "perturb_seed",
] + [f"{tensor}_{stat}" for tensor in ("weight", "bias") for stat in PERTURBATION_STAT_FIELDS]

# Columns every child row (layer_metrics, perturbations) shares with its run row.
SHARED_RUN_KEYS: tuple[str, ...] = ("schema_version", "run_id", "seed", "sweep_name", "run_label")


def ordered_columns(base: list[str], rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Schema columns, then extra keys found in rows in first-seen order, so no value is lost."""
    columns = list(base)
    seen = set(columns)
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append(key)
    return columns
