"""Build a config's teacher or student: architecture, per-layer init sources, trainability.

Init sources: a layer with source A or B is initialised with PyTorch's default initialiser
under a seed derived from (base seed, source, layer name) only, so teacher and student layers
with the same name, shape and source are identical. `random` uses a seed derived from
(base seed, model role, layer name). No draw touches the global RNG; weights are drawn on the
CPU and then moved, so they are the same on every device.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import seeds
from ..config import INPUT_SHAPE, ExperimentConfig
from .net import SplitHeadNet, mlp_spec

ROLES = ("teacher", "student")


def reset_layer(layer: nn.Module, gen: torch.Generator) -> None:
    """PyTorch's default Linear/Conv init (kaiming_uniform a=sqrt(5), uniform bias) from `gen`."""
    weight = layer.weight
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)
    if getattr(layer, "bias", None) is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        with torch.no_grad():
            layer.bias.uniform_(-bound, bound, generator=gen)


def layer_seed(config: ExperimentConfig, role: str, name: str) -> int:
    """Seed of one layer's initial weights, from its init source."""
    source = config.resolved_layer_configs[f"{role}_init"][name]
    if source in ("A", "B"):
        return seeds.derive(config.seed, "init", source, name)
    return seeds.derive(config.seed, "model", role, name)


def model_seed(config: ExperimentConfig, role: str) -> int:
    """The seed of a model's own (`random`) initialisation, as recorded in outputs."""
    return seeds.derive(config.seed, "model", role)


def build_model(
    config: ExperimentConfig, role: str, device: str | torch.device = "cpu"
) -> SplitHeadNet:
    """The initialised teacher or student of `config`, with trainability applied."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    model_type = getattr(config, f"{role}_type")
    spec = config.arch_spec(role) or mlp_spec(config.hidden_dims(role))
    with torch.device("meta"):
        net = SplitHeadNet(spec, INPUT_SHAPE, config.num_classes, config.m, model_type)
    net = net.to_empty(device="cpu")
    trainable = config.resolved_layer_configs[f"{role}_trainable"]
    for name, layer in net.layers.items():
        gen = torch.Generator().manual_seed(layer_seed(config, role, name))
        reset_layer(layer, gen)
        for p in layer.parameters():
            p.requires_grad_(trainable[name])
    return net.to(device)


def parameter_counts(net: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in net.parameters())
    return total, sum(p.numel() for p in net.parameters() if p.requires_grad)
