"""layer_quality: stream sampled images through a model once per pass group, one row per layer."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from .accumulate import QualityAccumulator
from .plan import DEFAULT_BUDGET, Slice, plan_passes
from .quality import undefined
from .sampling import balanced_subsets

FeaturesFn = Callable[[Tensor, list[int]], dict[int, Tensor]]
Warn = Callable[[str], None]


class QualityWarning(UserWarning):
    """A layer whose knowledge quality is undefined (a dead or constant layer): NaN columns."""


def _default_warn(message: str) -> None:
    warnings.warn(message, QualityWarning, stacklevel=3)


def _flat(out: dict[int, Tensor], s: Slice) -> Tensor:
    return out[s.layer].reshape(out[s.layer].shape[0], -1)[:, s.lo : s.hi].float()


def layer_quality(
    features_fn: FeaturesFn,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    layers: Sequence[int],
    *,
    seed: int = 0,
    n_train: int | None = None,
    budget_bytes: int = DEFAULT_BUDGET,
    chunk: int = 256,
    linear_probe: bool = False,
    per_class_a: int | None = None,
    per_class_b: int | None = None,
    timings: dict[str, float] | None = None,
    warn: Warn | None = None,
) -> list[dict[str, float]]:
    """Knowledge quality and geometry of each layer in `layers`, one dict per layer (ascending).

    `features_fn(x, layers)` runs the model (eval, no_grad) on a slice of `images` exactly as
    stored (uint8 or float; normalise inside the callable) and returns {layer: output}; it should
    stop after max(layers), e.g. `lambda x, ls: model.forward_layers(norm(x), ls,
    stop_after=max(ls))[0]`. Sets A and B come from `balanced_subsets(labels, num_classes, seed)`;
    n_train (the K of E) defaults to len(labels). Layers are grouped into passes holding at most
    `budget_bytes` of features; B's class spectra come from A's Gram when B lies inside A, else
    from a class-by-class pass. `timings`, when given, receives seconds per phase. A layer whose
    S, I, E or Q is undefined (zero vectors, no variance) keeps NaN there and is reported through
    `warn` (default: a QualityWarning); the other layers are unaffected.
    """
    clock = _Clock(timings)
    labels = torch.as_tensor(labels).reshape(-1).long()
    a, b = balanced_subsets(
        labels, num_classes, seed, per_class_a=per_class_a, per_class_b=per_class_b
    )
    layers = sorted({int(x) for x in layers})
    if not layers or layers[0] < 0:
        raise ConfigError(
            "layers", layers, "give one or more non-negative generalized-layer indices"
        )
    with torch.no_grad():
        probe = features_fn(images[a[:1]], layers)
    dims = {layer: probe[layer][0].numel() for layer in layers}
    n_train = labels.numel() if n_train is None else n_train
    where = {int(x): i for i, x in enumerate(a.tolist())}
    b_in_a = (
        torch.tensor([where[int(x)] for x in b.tolist()])
        if all(int(x) in where for x in b.tolist())
        else None
    )
    accs = {
        layer: QualityAccumulator(
            labels[a],
            dims[layer],
            n_train=n_train,
            b_in_a=b_in_a,
            b_labels=labels[b],
            probe=linear_probe,
        )
        for layer in layers
    }
    clock.lap("setup")
    if b_in_a is None:
        _class_pass(features_fn, images, labels, b, accs, dims, budget_bytes, chunk)
        clock.lap("class_pass")
    rows: dict[int, dict[str, float]] = {}
    for group in plan_passes(dims, a.numel(), budget_bytes):
        wanted = sorted({s.layer for s in group})
        for start in range(0, a.numel(), chunk):
            with torch.no_grad():
                out = features_fn(images[a[start : start + chunk]], wanted)
            for s in group:
                accs[s.layer].add(_flat(out, s))
            del out
        clock.lap("forward_gram")
        for layer in wanted:
            if accs[layer].complete and layer not in rows:
                rows[layer] = accs[layer].result()
                rows[layer].update(
                    layer=layer, dim=dims[layer], n_a=a.numel(), n_b=b.numel(), seed=seed
                )
                nan = undefined(rows[layer])
                if nan:
                    (warn or _default_warn)(
                        f"layer {layer}: {', '.join(nan)} undefined (NaN): "
                        f"{_why(rows[layer])}; it is never chosen by auto layers"
                    )
        clock.lap("stats")
    return [rows[layer] for layer in layers]


def _class_pass(
    features_fn: FeaturesFn,
    images: Tensor,
    labels: Tensor,
    b: Tensor,
    accs: dict[int, QualityAccumulator],
    dims: dict[int, int],
    budget_bytes: int,
    chunk: int,
) -> None:
    """B's per-class spectra, one class's features in memory at a time."""
    b_labels = labels[b]
    classes = b_labels.unique(sorted=True).tolist()
    largest = max(int((b_labels == c).sum()) for c in classes)
    plan = plan_passes(dims, largest, budget_bytes)
    for c in classes:
        idx = b[b_labels == c]
        for group in plan:
            wanted = sorted({s.layer for s in group})
            parts: dict[Slice, list[Tensor]] = {s: [] for s in group}
            for start in range(0, idx.numel(), chunk):
                with torch.no_grad():
                    out = features_fn(images[idx[start : start + chunk]], wanted)
                for s in group:
                    parts[s].append(_flat(out, s))
                del out
            for s in group:
                accs[s.layer].add_class(c, torch.cat(parts.pop(s)))


def _why(row: dict[str, float]) -> str:
    if not row["norm_mean"] > 0:
        return "its features are all zero"
    if row["degenerate_classes"]:
        return f"{int(row['degenerate_classes'])} classes have no within-class variance"
    return "a zero feature vector or a one-sample class"


class _Clock:
    """Accumulates wall seconds per phase into an optional dict."""

    def __init__(self, sink: dict[str, float] | None) -> None:
        self.sink, self.t = sink, time.perf_counter()

    def lap(self, name: str) -> None:
        t = time.perf_counter()
        if self.sink is not None:
            self.sink[name] = self.sink.get(name, 0.0) + t - self.t
        self.t = t
