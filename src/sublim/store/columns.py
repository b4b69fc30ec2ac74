"""What every output file holds and what each of its columns means (the documentation's
reference page is generated from this module; a test holds it to the files sublim writes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .schema import LAYER_METRICS_COLUMNS, PERTURBATION_COLUMNS, RUNS_COLUMNS


@dataclass(frozen=True)
class OutputFile:
    """One output file: its path pattern, what it holds, its columns (or keys), in order, and
    meanings that differ from the shared COLUMN_HELP for the same name."""

    name: str
    what: str
    columns: Sequence[str] = ()
    help: Mapping[str, str] = field(default_factory=dict)


COLUMN_HELP: dict[str, str] = {}

OUTPUT_FILES: list[OutputFile] = [
    OutputFile("<outdir>/seed_<seed>/runs.csv", "one row per run", RUNS_COLUMNS),
    OutputFile(
        "<outdir>/seed_<seed>/layer_metrics.csv", "per layer and tensor", LAYER_METRICS_COLUMNS
    ),
    OutputFile("<outdir>/seed_<seed>/perturbations.csv", "per perturbation", PERTURBATION_COLUMNS),
]
