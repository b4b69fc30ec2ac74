"""What one finished run produces: plain rows, handed from the engine to the store.

Kept free of torch and of file I/O so that the engine, the store and worker processes can all
share it (workers return records; only the store writes them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]


@dataclass
class RunRecord:
    """All rows of one run. `seed` picks the per-seed directory (`seed_000042`); `artifacts`
    (checkpoints, diagnostics) are files at paths relative to that directory."""

    seed: int
    run: Row
    layer_metrics: list[Row] = field(default_factory=list)
    perturbations: list[Row] = field(default_factory=list)
    config: Row = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)  # relative path -> bytes


# Value columns of a layer_metrics.csv row (what engine.metrics.compare returns).
LAYER_METRIC_VALUES: tuple[str, ...] = (
    "cosine",
    "diff_norm",
    "reference_norm",
    "other_norm",
    "relative_diff_reference",
    "relative_diff_symmetric",
)

# Representation columns of a layer_metrics.csv row (engine.similarity): teacher-student linear
# CKA and RSA of the layer's outputs on a fixed test subset, on teacher_student_* rows.
LAYER_REPRESENTATION_VALUES: tuple[str, ...] = ("linear_cka", "rsa")

# Compact aliases: alias comparison name -> `comparison` value in layer_metrics.csv.
ALIAS_COMPARISONS: dict[str, str] = {
    "init_teacher_student": "teacher_student_init",
    "final_teacher_student": "teacher_student_final",
    "student_init_final": "student_init_final",
    "teacher_init_final": "teacher_init_final",
}
ALIAS_HEADS: tuple[str, ...] = ("class_head", "aux_head")
ALIAS_TENSORS: tuple[str, ...] = ("weight", "bias")
# Alias metric prefix -> layer_metrics.csv column it copies (rel_fro = ||a-b||_F / ||a||_F).
ALIAS_METRICS: dict[str, str] = {
    "cos": "cosine",
    "rel_fro": "relative_diff_reference",
    "diff_norm": "diff_norm",
}


def alias_column(metric: str, comparison: str, head: str, tensor: str) -> str:
    """Name of one compact alias column, e.g. `cos_init_teacher_student_class_head_weight`."""
    return f"{metric}_{comparison}_{head}_{tensor}"


def compact_aliases(layer_metrics: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Compact alias values for a runs.csv row, picked from that run's layer_metrics rows."""
    wanted = {
        (comparison, head, tensor): alias
        for alias, comparison in ALIAS_COMPARISONS.items()
        for head in ALIAS_HEADS
        for tensor in ALIAS_TENSORS
    }
    out: dict[str, Any] = {}
    for row in layer_metrics:
        key = (row.get("comparison"), row.get("layer_name"), row.get("tensor_kind"))
        alias = wanted.get(key)  # type: ignore[arg-type]
        if alias is None:
            continue
        _, head, tensor = key
        for metric, source in ALIAS_METRICS.items():
            out[alias_column(metric, alias, head, tensor)] = row.get(source)
    return out
