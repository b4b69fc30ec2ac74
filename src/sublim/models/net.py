"""The split-head network: feature layers (linear or conv) read by a class head and an aux head.

An MLP is the special case of a spec with only linear layers, so one class serves both. The
class head and the aux head both read the last feature layer; callers ask for the head(s) they
need, so no loss or metric pays for a head it does not read. In the single ("ghost logit")
layout the two heads are the row slices of one `head` layer of num_classes + m outputs: the same
function, stored and configured as one layer, as in the original subliminal-learning MNIST setup.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import archspec
from .convpool import conv_max_pool

_ACT = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


def mlp_spec(hidden_dims: Sequence[int]) -> list[dict[str, Any]]:
    """The layer list of the reference MLP: fc1..fcN, each linear + ReLU."""
    return [
        {
            "name": f"fc{i + 1}",
            "type": "linear",
            "out_features": int(d),
            "bias": True,
            "activation": "relu",
        }
        for i, d in enumerate(hidden_dims)
    ]


def activation_sizes(spec: list[dict[str, Any]], in_shape: tuple[int, int, int]) -> list[int]:
    """Per-sample elements of every tensor a forward makes: the input, then each layer's output
    before its pool and (for a pooled conv) after it."""
    shapes = archspec.cnn_shapes(spec, tuple(in_shape), "spec")
    sizes, prev = [math.prod(in_shape)], tuple(in_shape)
    for entry, shape in zip(spec, shapes, strict=True):
        if entry["type"] == "conv2d":
            out = entry["out_channels"]
            for i, size in enumerate(prev[1:]):
                k, s, p, d = (
                    v if isinstance(v, int) else v[i]
                    for v in (
                        entry["kernel_size"],
                        entry["stride"],
                        entry["padding"],
                        entry["dilation"],
                    )
                )
                out *= (size + 2 * p - d * (k - 1) - 1) // s + 1
            sizes.append(out)
            if entry["pool"] is not None:
                sizes.append(math.prod(shape))
        else:
            sizes.append(shape[0])
        prev = shape
    return sizes


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """`x` [N, C, H, W] in channels-last memory order (a view when C is 1 and x contiguous).

    `contiguous(memory_format=...)` takes a 1-channel NCHW tensor as channels-last already, but
    oneDNN reads the strides and would keep the next layers NCHW; this gives it stride 1 on C.
    """
    if x.shape[1] == 1 and x.is_contiguous():
        n, _, h, w = x.shape
        return x.as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)


class _MaxPool(torch.autograd.Function):
    """Max pool over non-overlapping windows that keeps only its indices for the backward.

    PyTorch's own keeps its input too, a layer's largest activation (115 MB per step for the
    figure-3 student's first conv), though its backward only reads the input's shape. The
    backward here is `max_unpool2d` of the gradient: the same scatter, the same values.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: Any, stride: Any, padding: Any) -> torch.Tensor:
        out, idx = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
        ctx.save_for_backward(idx)
        ctx.args = (kernel, stride, padding, tuple(x.shape[-2:]))
        ctx.channels_last = not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last
        )
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (idx,) = ctx.saved_tensors
        kernel, stride, padding, size = ctx.args
        if ctx.channels_last:  # the gradient in the layout the conv below computes in
            grad = grad.contiguous(memory_format=torch.channels_last)
        return (
            F.max_unpool2d(grad, idx, kernel, stride, padding, output_size=size),
            None,
            None,
            None,
        )


def _max_pool(x: torch.Tensor, pool: dict[str, Any]) -> torch.Tensor:
    k, s, p = pool["kernel_size"], pool["stride"], pool["padding"]
    kh, kw = (k, k) if isinstance(k, int) else k
    sh, sw = (s, s) if isinstance(s, int) else s
    if x.requires_grad and torch.is_grad_enabled() and sh >= kh and sw >= kw:
        return _MaxPool.apply(x, k, s, p)
    return F.max_pool2d(x, k, s, p)


def apply_layer(entry: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """A layer's activation and pool on its pre-activation output `x` (spec `entry`).

    ReLU runs in place (no consumer of a layer's raw output needs it afterwards) and, before a
    max pool, after it: max and ReLU commute exactly, gradients included."""
    act, pool = entry["activation"], entry.get("pool")
    relu_after_pool = act == "relu" and pool is not None and pool["type"] == "max"
    if act == "relu" and not relu_after_pool:
        x = F.relu_(x)
    elif act not in ("relu", "none"):
        x = _ACT[act](x)
    if pool is not None:
        if pool["type"] == "max":
            x = _max_pool(x, pool)
        elif pool["type"] == "avg":
            x = F.avg_pool2d(x, pool["kernel_size"], pool["stride"], pool["padding"])
        else:
            x = F.adaptive_avg_pool2d(x, pool["output_size"])
    return F.relu_(x) if relu_after_pool else x


def conv_layer(
    entry: dict[str, Any], x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Conv layer `entry` (weights given) with its activation and pool on `x`.

    `apply_layer(entry, conv2d(x))`; on the CPU in training, a pooled conv runs in row chunks
    (models.convpool), which keeps its largest buffers a chunk's size."""
    pooled = conv_max_pool(x, weight, bias, entry)
    if pooled is not None:
        return F.relu_(pooled) if entry["activation"] == "relu" else pooled
    y = F.conv2d(x, weight, bias, entry["stride"], entry["padding"], entry["dilation"])
    return apply_layer(entry, y)


class SplitHeadNet(nn.Module):
    """Feature layers from a normalised spec, then `class_head` and `aux_head` (both linear)."""

    def __init__(
        self,
        spec: list[dict[str, Any]],
        in_shape: tuple[int, int, int],
        num_classes: int,
        m: int,
        kind: str,
        head_layout: str = "split",
    ) -> None:
        super().__init__()
        self.kind, self.spec, self.in_shape = kind, spec, tuple(in_shape)
        self.head_layout, self.num_classes, self.m = head_layout, num_classes, m
        self.shapes = archspec.cnn_shapes(spec, self.in_shape, kind)
        self.layers = nn.ModuleDict()
        prev: tuple[int, ...] = self.in_shape
        for entry, shape in zip(spec, self.shapes, strict=True):
            if entry["type"] == "conv2d":
                self.layers[entry["name"]] = nn.Conv2d(
                    prev[0],
                    entry["out_channels"],
                    entry["kernel_size"],
                    stride=entry["stride"],
                    padding=entry["padding"],
                    dilation=entry["dilation"],
                    bias=entry["bias"],
                )
            else:
                fan_in = 1
                for d in prev:
                    fan_in *= d
                self.layers[entry["name"]] = nn.Linear(fan_in, entry["out_features"], entry["bias"])
            prev = shape
        self.feature_dim = archspec.feature_dim(self.shapes)
        self.max_activation = max(activation_sizes(spec, self.in_shape))  # sizes eval chunks
        if head_layout == "split":
            self.layers["class_head"] = nn.Linear(self.feature_dim, num_classes)
            self.layers["aux_head"] = nn.Linear(self.feature_dim, m)
        else:
            self.layers["head"] = nn.Linear(self.feature_dim, num_classes + m)
        self._steps = [(e, self.layers[e["name"]]) for e in spec]
        self._conv_first = spec[0]["type"] == "conv2d"

    def features(
        self, x: torch.Tensor, tap: Callable[[str, torch.Tensor], None] | None = None
    ) -> torch.Tensor:
        """Run the feature layers; returns [batch, feature_dim].

        On the CPU a CNN runs channels-last (oneDNN's fast layout; max pooling is ~8x faster
        in it) and a ReLU after a max pool's conv runs after the pool (they commute exactly,
        values and gradients, on a quarter of the elements or fewer); in training a pooled conv
        runs in row chunks (`conv_layer`). `tap(name, output)` sees every feature layer's
        output (after its activation and pool); it must not change it."""
        flat = False
        if self._conv_first and x.device.type == "cpu":
            x = channels_last(x)
        for entry, layer in self._steps:
            if entry["type"] == "linear" and not flat:
                x, flat = x.flatten(1), True
            if entry["type"] == "conv2d":
                x = conv_layer(entry, x, layer.weight, layer.bias)
            else:
                x = apply_layer(entry, layer(x))
            if tap is not None:
                tap(entry["name"], x)
        return x if flat else x.flatten(1)

    def head_tensors(self, which: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of "class_head" or "aux_head" (row slices of `head` when single)."""
        if self.head_layout == "split":
            layer = self.layers[which]
            return layer.weight, layer.bias
        head = self.layers["head"]
        rows = (
            slice(0, self.num_classes) if which == "class_head" else slice(self.num_classes, None)
        )
        return head.weight[rows], head.bias[rows]

    def head_logits(self, which: str, h: torch.Tensor) -> torch.Tensor:
        """Logits of one head from features `h`."""
        if self.head_layout == "split":
            return self.layers[which](h)
        return F.linear(h, *self.head_tensors(which))

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_logits("class_head", self.features(x))

    def aux_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_logits("aux_head", self.features(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.head_logits("class_head", h), self.head_logits("aux_head", h)

    def describe(self) -> str:
        """One-line architecture description, with every layer's output shape."""
        parts = [f"{self.kind} in {'x'.join(map(str, self.in_shape))}"]
        for entry, shape in zip(self.spec, self.shapes, strict=True):
            text = f"{entry['name']} {entry['type']}"
            if entry["type"] == "conv2d":
                text += f" k{entry['kernel_size']} s{entry['stride']} p{entry['padding']}"
                if entry["dilation"] != 1:
                    text += f" d{entry['dilation']}"
            if entry["activation"] != "none":
                text += f" {entry['activation']}"
            pool = entry.get("pool")
            if pool is not None:
                size = pool.get("output_size", pool.get("kernel_size"))
                text += f" {pool['type']}pool{size}"
            parts.append(f"{text} -> {'x'.join(map(str, shape))}")
        if self.head_layout == "split":
            parts.append(f"class_head {self.feature_dim}->{self.num_classes}")
            parts.append(f"aux_head {self.feature_dim}->{self.m}")
        else:
            parts.append(
                f"head {self.feature_dim}->{self.num_classes}+{self.m} (class + ghost logits)"
            )
        return "; ".join(parts)
