"""Apply perturbation specs to a model at a timing, and describe what each one did."""

from __future__ import annotations

import torch
from torch import nn

from .. import seeds
from ..config import ExperimentConfig
from .metrics import compare


def perturb_seed(config: ExperimentConfig, index: int, layer: str) -> int:
    """Seed of spec `index` applied to `layer` (its own stream: one row, one seed)."""
    spec = config.perturb[index]
    return seeds.derive(config.seed, "perturb", index, spec.target, spec.timing, layer)


@torch.no_grad()
def apply_perturbations(
    config: ExperimentConfig, net: nn.Module, target: str, timing: str
) -> list[dict[str, object]]:
    """Add std * N(0, 1) to the selected tensors of `net` for every spec at (target, timing).

    Returns one row per spec and layer. std = 0 changes nothing but still writes its row.
    """
    rows: list[dict[str, object]] = []
    names = config.layer_names(target)
    for index, spec in enumerate(config.perturb):
        if spec.target != target or spec.timing != timing:
            continue
        layers = names if spec.layers == ("all",) else list(spec.layers)
        for name in layers:
            layer = net.layers[name]  # type: ignore[index]
            pseed = perturb_seed(config, index, name)
            row: dict[str, object] = {
                "timing": timing,
                "target": target,
                "layer_name": name,
                "std": spec.std,
                "include_weight": spec.include_weight,
                "include_bias": spec.include_bias,
                "distribution": spec.distribution,
                "perturb_seed": pseed,
            }
            for kind, include in (("weight", spec.include_weight), ("bias", spec.include_bias)):
                tensor = getattr(layer, kind, None)
                if tensor is None:
                    stats = dict.fromkeys(("delta_norm", "before_norm", "after_norm"), float("nan"))
                    stats.update(delta_rel=float("nan"), before_after_cosine=float("nan"))
                else:
                    before = tensor.detach().cpu().clone()
                    delta = torch.zeros_like(before)
                    if include and spec.std > 0:
                        gen = seeds.generator(pseed, kind)
                        delta = torch.randn(before.shape, generator=gen).mul_(spec.std)
                        tensor.add_(delta.to(tensor.device))
                    after = tensor.detach().cpu()
                    c = compare(before, after)
                    dn = delta.double().norm().item()
                    bn = c["reference_norm"]
                    stats = {
                        "delta_norm": dn,
                        "before_norm": bn,
                        "after_norm": c["other_norm"],
                        "delta_rel": dn / bn if bn > 0 else float("nan"),
                        "before_after_cosine": c["cosine"],
                    }
                row.update({f"{kind}_{k}": v for k, v in stats.items()})
            rows.append(row)
    return rows
