"""Layer metrics: how far two snapshots of named layers are from each other.

Snapshots are {layer: {"weight": tensor, "bias": tensor | None}} on the CPU. Comparisons are
done in float64 on whole tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config.archspec import SINGLE_HEAD
from ..records import LAYER_METRIC_VALUES

Snapshot = dict[str, dict[str, torch.Tensor | None]]
TENSOR_KINDS = ("weight", "bias")

# comparison name -> (reference model, reference state, other model, other state)
COMPARISONS = {
    "teacher_student_init": ("teacher", "init", "student", "init"),
    "teacher_student_final": ("teacher", "final", "student", "final"),
    "teacher_init_final": ("teacher", "init", "teacher", "final"),
    "student_init_final": ("student", "init", "student", "final"),
}


def snapshot(net: nn.Module) -> Snapshot:
    """Copy every named layer's weight and bias to the CPU.

    A single-layout `head` appears as its two slices, `class_head` and `aux_head`, so layer
    metrics compare the class and ghost parts separately in both layouts.
    """
    out: Snapshot = {}
    for name, layer in net.layers.items():  # type: ignore[union-attr]
        if name == SINGLE_HEAD:
            for part in ("class_head", "aux_head"):
                w, b = net.head_tensors(part)  # type: ignore[operator]
                out[part] = {
                    "weight": w.detach().cpu().clone(),
                    "bias": None if b is None else b.detach().cpu().clone(),
                }
            continue
        out[name] = {
            k: (
                None
                if getattr(layer, k, None) is None
                else getattr(layer, k).detach().cpu().clone()
            )
            for k in TENSOR_KINDS
        }
    return out


def compare(ref: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Cosine, difference norm, both norms and relative differences of two same-shaped tensors."""
    a, b = ref.double().flatten(), other.double().flatten()
    na, nb = a.norm().item(), b.norm().item()
    diff = (a - b).norm().item()
    denom = na * nb
    return {
        "cosine": (a @ b).item() / denom if denom > 0 else math.nan,
        "diff_norm": diff,
        "reference_norm": na,
        "other_norm": nb,
        "relative_diff_reference": diff / na if na > 0 else math.nan,
        "relative_diff_symmetric": 2 * diff / (na + nb) if na + nb > 0 else math.nan,
    }


def _shape(t: torch.Tensor | None) -> str:
    return "" if t is None else "x".join(str(d) for d in t.shape)


def layer_rows(comparison: str, ref: Snapshot, other: Snapshot) -> list[dict[str, object]]:
    """One row per layer (union of both snapshots, in order) and tensor kind."""
    ref_model, ref_state, other_model, other_state = COMPARISONS[comparison]
    rows: list[dict[str, object]] = []
    names = list(dict.fromkeys([*ref, *other]))
    for name in names:
        for kind in TENSOR_KINDS:
            a = ref.get(name, {}).get(kind)
            b = other.get(name, {}).get(kind)
            if name not in ref:
                status = f"missing_in_{ref_model}"
            elif name not in other:
                status = f"missing_in_{other_model}"
            elif a is None and b is None:
                status = "missing_both"
            elif a is None:
                status = f"missing_tensor_in_{ref_model}"
            elif b is None:
                status = f"missing_tensor_in_{other_model}"
            elif a.shape != b.shape:
                status = "shape_mismatch"
            else:
                status = "comparable"
            values = (
                compare(a, b)  # type: ignore[arg-type]
                if status == "comparable"
                else {k: math.nan for k in LAYER_METRIC_VALUES}
            )
            rows.append(
                {
                    "comparison": comparison,
                    "reference_model": ref_model,
                    "other_model": other_model,
                    "reference_state": ref_state,
                    "other_state": other_state,
                    "layer_name": name,
                    "tensor_kind": kind,
                    "reference_shape": _shape(a),
                    "other_shape": _shape(b),
                    "status": status,
                    **values,
                }
            )
    return rows
