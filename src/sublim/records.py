"""What one finished run produces: plain rows, handed from the engine to the store.

Kept free of torch and of file I/O so that the engine, the store and worker processes can all
share it (workers return records; only the store writes them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]


@dataclass
class RunRecord:
    """All rows of one run. `seed` picks the per-seed directory (`seed_000042`)."""

    seed: int
    run: Row
    layer_metrics: list[Row] = field(default_factory=list)
    perturbations: list[Row] = field(default_factory=list)
    config: Row = field(default_factory=dict)
