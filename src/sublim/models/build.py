"""Build a config's teacher or student: architecture, per-layer init sources, trainability.

Init sources: a layer with source A or B is initialised under a seed derived from
(base seed, source, layer name) only, so teacher and student layers with the same name, shape
and source are identical. `random` uses a seed derived from (base seed, model role, layer name).
Init schemes: `torch-default` is PyTorch's Linear/Conv initialiser; `normal-fan-in` draws
weights from N(0, std = 1/sqrt(fan_in)) with zero bias (the original subliminal-learning MNIST
code). A single-layout `head` draws its class rows and its ghost rows from two seeds, so the
class rows do not depend on m. No draw touches the global RNG; weights are drawn on the CPU and
then moved, so they are the same on every device.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import seeds
from ..config import ExperimentConfig
from ..config.archspec import SINGLE_HEAD
from .net import SplitHeadNet, mlp_spec

ROLES = ("teacher", "student")


def init_tensors(
    weight: torch.Tensor, bias: torch.Tensor | None, gen: torch.Generator, scheme: str
) -> None:
    """Initialise (in place) one layer's weight and bias, or row slices of them, from `gen`."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    with torch.no_grad():
        if scheme == "normal-fan-in":
            weight.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)
            if bias is not None:
                bias.zero_()
            return
        # PyTorch's default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)
        if bias is not None:
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            bias.uniform_(-bound, bound, generator=gen)


def reset_layer(layer: nn.Module, gen: torch.Generator, scheme: str = "torch-default") -> None:
    """Initialise a Linear or Conv layer with `scheme` from `gen`."""
    init_tensors(layer.weight, getattr(layer, "bias", None), gen, scheme)


def layer_seed(config: ExperimentConfig, role: str, name: str, *part: str) -> int:
    """Seed of one layer's initial weights (or of a `part` of it), from its init source."""
    source = config.resolved_layer_configs[f"{role}_init"][name]
    if source in ("A", "B"):
        return seeds.derive(config.seed, "init", source, name, *part)
    return seeds.derive(config.seed, "model", role, name, *part)


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
        net = SplitHeadNet(
            spec, config.input_shape, config.num_classes, config.m, model_type, config.head_layout
        )
    net = net.to_empty(device="cpu")
    trainable = config.resolved_layer_configs[f"{role}_trainable"]
    scheme = config.init_scheme
    for name, layer in net.layers.items():
        if name == SINGLE_HEAD:
            for part in ("class_head", "aux_head"):
                gen = torch.Generator().manual_seed(layer_seed(config, role, name, part))
                init_tensors(*net.head_tensors(part), gen, scheme)
        else:
            gen = torch.Generator().manual_seed(layer_seed(config, role, name))
            reset_layer(layer, gen, scheme)
        for p in layer.parameters():
            p.requires_grad_(trainable[name])
    return net.to(device)


def parameter_counts(net: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in net.parameters())
    return total, sum(p.numel() for p in net.parameters() if p.requires_grad)
