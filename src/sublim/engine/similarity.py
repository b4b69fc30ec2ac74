"""Teacher-student representational similarity per hidden layer: linear CKA and RSA.

Measured on a fixed subset of the test set (`similarity_samples` images drawn from the run's
seed), from the evaluation passes a run makes anyway: the kept rows' layer outputs are tapped
while accuracy is computed (`train.evaluate_keeping`) and reduced to N x N summaries at once.
The teacher is the one the student learns from (trained, as the student stage sees it; at the
end, after any late perturbation); the student is taken at initialisation and after training.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import seeds
from ..config import ExperimentConfig
from ..geometry.similarity import RepSummary, compare_summaries
from ..records import LAYER_REPRESENTATION_VALUES

LayerValues = dict[str, tuple[float, float]]  # layer name -> (linear CKA, RSA)


def similarity_subset(config: ExperimentConfig, n_test: int, device: torch.device) -> Any:
    """Sorted test-row indices of the similarity subset (same for every run of a seed), or None
    when `similarity_samples` is 0."""
    n = min(config.similarity_samples, n_test)
    if n < 3:
        return None
    g = seeds.generator(config.seed, "similarity_subset")
    return torch.randperm(n_test, generator=g)[:n].sort().values.to(device)


def layer_values(teacher: dict[str, RepSummary], student: dict[str, RepSummary]) -> LayerValues:
    """(CKA, RSA) of every hidden layer name both models have."""
    return {
        name: compare_summaries(teacher[name], rep)
        for name, rep in student.items()
        if name in teacher
    }


def attach(rows: list[dict[str, Any]], values: dict[str, LayerValues]) -> None:
    """Set the representation columns of layer_metrics rows (NaN where not measured).

    A layer's values are the same on its weight and bias rows: they describe the layer.
    """
    for row in rows:
        got = values.get(row["comparison"], {}).get(row["layer_name"])
        pair = got if got is not None else (math.nan, math.nan)
        row.update(zip(LAYER_REPRESENTATION_VALUES, pair, strict=True))
