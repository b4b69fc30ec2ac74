"""Adam for the training stages, without torch.optim's start-up cost.

torch.optim imports torch._dynamo on first use (about 0.8 s per process here), which is a
sixth of the default run. This Adam (Kingma & Ba, with PyTorch's defaults and bias
correction) calls the same fused kernel that `torch.optim.Adam(fused=True)` uses when it is
available, and an equivalent plain-tensor update otherwise. Adam is elementwise, so one
instance over stacked parameters is K independent Adams.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

_FUSED = hasattr(torch, "_fused_adam_")


class Adam:
    """Adam over a fixed list of parameters (lr, betas=(0.9, 0.999), eps=1e-8, no decay)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.fused = _FUSED if fused is None else fused
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self) -> None:
        """Drop the gradients (set to None, as torch.optim does by default)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params = [self.params[i] for i in live]
        grads = [self.params[i].grad for i in live]
        avg = [self.exp_avg[i] for i in live]
        sq = [self.exp_avg_sq[i] for i in live]
        steps = [self.steps[i] for i in live]
        b1, b2 = self.betas
        if self.fused:
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                params,
                grads,
                avg,
                sq,
                [],
                steps,
                lr=self.lr,
                beta1=b1,
                beta2=b2,
                weight_decay=0.0,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )
            return
        for p, g, m, v, t in zip(params, grads, avg, sq, steps, strict=True):
            t += 1
            n = int(t.item())
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2**n)).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1**n))
