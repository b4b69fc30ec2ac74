"""Distillation losses: a registry of components, so the student stage never forks per method.

A loss takes the student's and the teacher's outputs on one noise batch (here the aux logits)
and the config, and returns a scalar. Register a new one with `@register("name")`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..config import ExperimentConfig

DistillLoss = Callable[[torch.Tensor, torch.Tensor, ExperimentConfig], torch.Tensor]
_LOSSES: dict[str, DistillLoss] = {}


def register(name: str) -> Callable[[DistillLoss], DistillLoss]:
    """Decorator adding a distillation loss under `name`."""

    def add(fn: DistillLoss) -> DistillLoss:
        _LOSSES[name] = fn
        return fn

    return add


def get_loss(name: str) -> DistillLoss:
    """The registered loss `name` (KeyError lists the registered ones)."""
    try:
        return _LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown distill loss {name!r}; registered: {', '.join(_LOSSES)}") from None


@register("mse")
def mse(student: torch.Tensor, teacher: torch.Tensor, config: ExperimentConfig) -> torch.Tensor:
    """Mean squared error over batch and aux dimensions (the reference)."""
    return F.mse_loss(student, teacher)


@register("kl")
def kl(student: torch.Tensor, teacher: torch.Tensor, config: ExperimentConfig) -> torch.Tensor:
    """KL(teacher || student) of softmax(logits / T), batchmean, times T^2 (Hinton et al.)."""
    t = config.temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=-1),
        F.log_softmax(teacher / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


@register("standardized-mse")
def standardized_mse(
    student: torch.Tensor, teacher: torch.Tensor, config: ExperimentConfig
) -> torch.Tensor:
    """MSE after z-scoring both sides with the teacher's per-dimension batch mean and std."""
    mean = teacher.mean(dim=0, keepdim=True)
    std = teacher.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-6)
    return F.mse_loss((student - mean) / std, (teacher - mean) / std)
