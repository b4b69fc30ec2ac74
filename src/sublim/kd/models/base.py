"""TapNet, the interface every `sublim.kd` model implements, and helpers shared by the families.

A TapNet's `forward(x, taps)` returns a dict with "logits" and the requested intermediate
outputs ("taps"), named uniformly across families (see `sublim.kd.models`).

It can also be read by *generalized layer* (KD_wo_CE's definition): the output of each ReLU
(ReLU6), residual / inverted-residual / encoder block, ViT patch embedding and the Flatten before
the first Linear, numbered 0, 1, ... in forward order. Each family's `_forward_all` passes every
such output through `walk(x, name)`; the default walk returns `x` unchanged, so plain forwards pay
one Python call per layer and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class GenLayer:
    """One generalized layer: its index, a module-path name and its per-sample output shape."""

    index: int
    name: str
    shape: tuple[int, ...]


class _Stop(Exception):
    """Raised by a walk to end the forward pass early (`stop_after`)."""


class _Walk:
    """What one forward pass does at each generalized layer: record, detach, stop."""

    __slots__ = ("count", "wanted", "detach_after", "stop_after", "out", "table")

    def __init__(
        self,
        wanted: frozenset[int] = frozenset(),
        detach_after: int | None = None,
        stop_after: int | None = None,
        table: bool = False,
    ) -> None:
        self.count = 0
        self.wanted, self.detach_after, self.stop_after = wanted, detach_after, stop_after
        self.out: dict[int, Tensor] = {}
        self.table: list[GenLayer] | None = [] if table else None

    def __call__(self, x: Tensor, name: str) -> Tensor:
        k = self.count
        self.count = k + 1
        if self.table is not None:
            self.table.append(GenLayer(k, name, tuple(x.shape[1:])))
        if k in self.wanted:
            self.out[k] = x
        if k == self.detach_after:
            x = x.detach()
        if k == self.stop_after:
            raise _Stop
        return x


def _no_walk(x: Tensor, name: str) -> Tensor:
    """The walk of a plain forward: nothing recorded."""
    return x


# What `_forward_all` calls on each generalized layer's output: walk(output, name) -> the tensor
# the network continues from.
Walk = Callable[[Tensor, str], Tensor]


class _MetaCall(nn.Module):
    """Runs `net._forward_all(x, walk)`, so functional_call can swap in meta parameters."""

    def __init__(self, net: TapNet, walk: _Walk | None) -> None:
        super().__init__()
        self.net = net
        self.walk = walk

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.net._forward_all(x, self.walk or _no_walk)


class TapNet(nn.Module):
    """A classifier whose forward returns named intermediate outputs ("taps").

    Subclasses set `tap_names` (every tap except "logits", in forward order), own a `classifier`
    (a Linear, or the MLP head of the VGG-BN family), and implement `_forward_all`, which returns
    every tap and "logits" and passes each generalized layer's output through `walk`.
    """

    tap_names: tuple[str, ...] = ()
    classifier: nn.Module
    # How Linear layers are initialised: "torch" (PyTorch's default), "torch_zero_bias" (default
    # weight, zero bias) or "normal" (N(0, 0.01) weight, zero bias); RepDistiller varies by family.
    linear_init: str = "torch"
    # The taps that are the benchmark's intermediate features, in forward order: what
    # RepDistiller's `forward(x, is_feat=True, preact=False)` returns as feat[1:-1] (so the
    # last is its feat[-2]). Feature distillers (AT, NST, SP, FitNets, FT) read these by
    # default; empty means the post-activation "stage1".."stageN" taps.
    feature_taps: tuple[str, ...] = ()
    # The same features taken before their final activation, where the family has one: what
    # RepDistiller's `forward(x, is_feat=True, preact=True)` returns as feat[1:-1] (AB reads
    # these, OFD and ReviewKD the teacher's). Empty: the model has no pre-activation taps.
    preact_taps: tuple[str, ...] = ()
    # The attribute holding the head (from the first Linear on), for `param_groups`.
    head_name: str = "classifier"

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        raise NotImplementedError

    def preact_bns(self) -> dict[str, nn.BatchNorm2d]:
        """Pre-activation tap name -> the BatchNorm whose output (plus the shortcut, in a
        residual block) forms that tap: mdistiller's `get_bn_before_relu`, from whose gamma and
        beta OFD derives its margins. Default: none (the family declares no such BNs)."""
        return {}

    def forward(self, x: Tensor, taps: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Always returns "logits"; also every tap named in `taps` (None: all taps)."""
        if isinstance(taps, str):
            taps = (taps,)
        if taps is not None:
            unknown = [t for t in taps if t != "logits" and t not in self.tap_names]
            if unknown:
                raise ValueError(
                    f"{type(self).__name__} has no tap(s) {unknown}; "
                    f"taps: {', '.join(self.tap_names)}"
                )
        out = self._forward_all(x)
        if taps is None:
            return out
        return {"logits": out["logits"], **{t: out[t] for t in taps}}

    # -- shapes without data -------------------------------------------------------------------

    def _meta_forward(self, in_shape: Sequence[int], walk: _Walk | None) -> dict[str, Tensor]:
        """One forward on the meta device with meta copies of the parameters and buffers: no data
        allocated, the model (and its BatchNorm statistics) untouched; input in the model's dtype."""
        meta = {
            name: torch.empty_like(t, device="meta")
            for name, t in (*self.named_parameters(), *self.named_buffers())
        }
        first = next(self.parameters(), None)
        dtype = first.dtype if first is not None else torch.get_default_dtype()
        x = torch.zeros((2, *in_shape), device="meta", dtype=dtype)
        call = _MetaCall(self, walk)
        with torch.no_grad():
            return torch.func.functional_call(call, {f"net.{k}": v for k, v in meta.items()}, (x,))

    def tap_shapes(
        self, in_shape: tuple[int, int, int] = (3, 32, 32)
    ) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of every tap and of "logits", for inputs of shape `in_shape`."""
        out = self._meta_forward(in_shape, None)
        return {name: tuple(t.shape[1:]) for name, t in out.items()}

    def layer_table(self, in_shape: Sequence[int] = (3, 32, 32)) -> list[GenLayer]:
        """Every generalized layer (index, name, per-sample shape) for inputs of `in_shape`."""
        walk = _Walk(table=True)
        self._meta_forward(in_shape, walk)
        assert walk.table is not None
        return walk.table

    def num_layers(self, in_shape: Sequence[int] = (3, 32, 32)) -> int:
        """How many generalized layers the model has (cached per input shape)."""
        key = tuple(in_shape)
        cache: dict[tuple[int, ...], int] = self.__dict__.setdefault("_num_layers", {})
        if key not in cache:
            cache[key] = len(self.layer_table(key))
        return cache[key]

    def layer_index(self, index: int, in_shape: Sequence[int] = (3, 32, 32)) -> int:
        """`index` as a non-negative generalized-layer index; ValueError listing the valid range
        with each layer's name and shape when it is out of range."""
        n = self.num_layers(in_shape)
        if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
            rows = ", ".join(
                f"{g.index} {g.name} {'x'.join(map(str, g.shape))}"
                for g in self.layer_table(in_shape)
            )
            raise ValueError(
                f"generalized layer {index!r} out of range for {type(self).__name__}: "
                f"valid {-n}..{n - 1} ({rows})"
            )
        return index % n

    # -- generalized-layer forward -------------------------------------------------------------

    def forward_layers(
        self,
        x: Tensor,
        layers: Sequence[int],
        *,
        detach_after: int | None = None,
        stop_after: int | None = None,
    ) -> tuple[dict[int, Tensor], Tensor | None]:
        """Outputs of generalized layers `layers` (negative: from the end) and the logits.

        `stop_after=k`: return as soon as layer k is computed (logits None). `detach_after=k`:
        layer k is recorded as computed, but the rest of the network runs on its `.detach()`
        (a head trained by cross-entropy alone on the features). Keys are the indices as given.
        """
        shape = tuple(x.shape[1:])
        index = {i: self.layer_index(i, shape) for i in layers}
        detach = None if detach_after is None else self.layer_index(detach_after, shape)
        stop = None if stop_after is None else self.layer_index(stop_after, shape)
        if stop is not None and index and max(index.values()) > stop:
            raise ValueError(
                f"layers {list(layers)} go past stop_after={stop_after} (layer {stop})"
            )
        walk = _Walk(frozenset(index.values()), detach, stop)
        try:
            logits: Tensor | None = self._forward_all(x, walk)["logits"]
        except _Stop:
            logits = None
        return {i: walk.out[k] for i, k in index.items()}, logits

    def forward_from(self, h: Tensor, after: int, in_shape: Sequence[int]) -> Tensor:
        """Logits of the layers after generalized layer `after`, run on `h` in place of that
        layer's output (SimKD's reused teacher tail). `in_shape` is the model's input shape.

        The forward is written once per family, so the layers before `after` run on a single
        blank image, in eval mode and without a gradient (their outputs are discarded); from
        layer `after` on, the model's own mode and the caller's grad mode apply."""
        k = self.layer_index(after, tuple(in_shape))
        grad, mode = torch.is_grad_enabled(), self.training

        def walk(x: Tensor, name: str) -> Tensor:
            nonlocal count
            count += 1
            if count - 1 != k:
                return x
            torch.set_grad_enabled(grad)
            self.train(mode)
            return h

        count = 0
        blank = torch.zeros((1, *in_shape), dtype=h.dtype, device=h.device)
        self.eval()
        torch.set_grad_enabled(False)
        try:
            return self._forward_all(blank, walk)["logits"]
        finally:
            torch.set_grad_enabled(grad)
            self.train(mode)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """ "backbone": every parameter before the first Linear; "head": from it on (the attribute
        `head_name`). For a smaller learning rate on a pretrained backbone."""
        head = getattr(self, self.head_name)
        head_ids = {id(p) for p in head.parameters()}
        return {
            "backbone": [p for p in self.parameters() if id(p) not in head_ids],
            "head": list(head.parameters()),
        }

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise as RepDistiller does, drawing from `generator` (None: the global RNG).

        Convolutions: N(0, 2 / (k*k*out_channels)) (He, fan-out), biases zero; BatchNorm: weight
        1, bias 0, fresh running statistics; Linear layers per `linear_init`.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out), generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, nn.Linear):
                if self.linear_init == "normal":
                    nn.init.normal_(m.weight, 0.0, 0.01, generator=generator)
                else:
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if self.linear_init == "torch":
                    bound = 1.0 / math.sqrt(m.in_features)
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
                else:
                    nn.init.zeros_(m.bias)


def _global_pool(x: Tensor) -> Tensor:
    """Global average pool to a flat (N, C) feature."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
