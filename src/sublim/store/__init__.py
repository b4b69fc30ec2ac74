"""Result files: row schemas, crash-safe single-writer storage, value formatting.

The store knows row schemas and files only; it never imports torch, the engine or models.
"""

from .csvio import encode_header, encode_rows, format_value, read_header, read_rows
from .schema import (
    ALIAS_COMPARISONS,
    ALIAS_HEADS,
    ALIAS_METRICS,
    ALIAS_TENSORS,
    COMPACT_ALIAS_COLUMNS,
    LAYER_METRICS_COLUMNS,
    PERTURBATION_COLUMNS,
    RUNS_BASE_COLUMNS,
    RUNS_COLUMNS,
    SCHEMA_VERSION,
    alias_column,
    compact_aliases,
    ordered_columns,
)
from .writer import (
    CONFIGS_FILE,
    GLOBAL_LAYER_METRICS_FILE,
    GLOBAL_PERTURBATIONS_FILE,
    GLOBAL_RUNS_FILE,
    LAYER_METRICS_FILE,
    PERTURBATIONS_FILE,
    RUNS_FILE,
    RunStore,
    check_writable,
    seed_dir_name,
)

__all__ = [
    "ALIAS_COMPARISONS",
    "ALIAS_HEADS",
    "ALIAS_METRICS",
    "ALIAS_TENSORS",
    "COMPACT_ALIAS_COLUMNS",
    "CONFIGS_FILE",
    "GLOBAL_LAYER_METRICS_FILE",
    "GLOBAL_PERTURBATIONS_FILE",
    "GLOBAL_RUNS_FILE",
    "LAYER_METRICS_COLUMNS",
    "LAYER_METRICS_FILE",
    "PERTURBATIONS_FILE",
    "PERTURBATION_COLUMNS",
    "RUNS_BASE_COLUMNS",
    "RUNS_COLUMNS",
    "RUNS_FILE",
    "SCHEMA_VERSION",
    "RunStore",
    "alias_column",
    "check_writable",
    "compact_aliases",
    "encode_header",
    "encode_rows",
    "format_value",
    "ordered_columns",
    "read_header",
    "read_rows",
    "seed_dir_name",
]
