"""TapNet, the interface every `sublim.kd` model implements, and helpers shared by the families.

A TapNet's `forward(x, taps)` returns a dict with "logits" and the requested intermediate
outputs ("taps"), named uniformly across families (see `sublim.kd.models`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TapNet(nn.Module):
    """A classifier whose forward returns named intermediate outputs ("taps").

    Subclasses set `tap_names` (every tap except "logits", in forward order), own a `classifier`
    Linear, and implement `_forward_all`, which returns every tap and "logits".
    """

    tap_names: tuple[str, ...] = ()
    classifier: nn.Linear
    # How the classifier is initialised: "torch" (PyTorch's default), "torch_zero_bias" (default
    # weight, zero bias) or "normal" (N(0, 0.01) weight, zero bias); RepDistiller varies by family.
    linear_init: str = "torch"

    def _forward_all(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

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

    def tap_shapes(
        self, in_shape: tuple[int, int, int] = (3, 32, 32)
    ) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of every tap and of "logits", for inputs of shape `in_shape`.

        Runs one forward on the meta device with meta copies of the parameters and buffers, so it
        allocates no data and leaves the model (and its BatchNorm statistics) untouched.
        """
        meta = {
            name: torch.empty_like(t, device="meta")
            for name, t in (*self.named_parameters(), *self.named_buffers())
        }
        x = torch.zeros((2, *in_shape), device="meta")
        with torch.no_grad():
            out = torch.func.functional_call(self, meta, (x,))
        return {name: tuple(t.shape[1:]) for name, t in out.items()}

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise as RepDistiller does, drawing from `generator` (None: the global RNG).

        Convolutions: N(0, 2 / (k*k*out_channels)) (He, fan-out), biases zero; BatchNorm: weight
        1, bias 0, fresh running statistics; the classifier per `linear_init`.
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
