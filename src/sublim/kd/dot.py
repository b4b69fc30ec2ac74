"""DOT, the distillation-oriented trainer (Zhao et al., ICCV 2023; mdistiller engine/dot.py).

SGD whose momentum differs by loss: the distillation gradient gets momentum 0.9 + delta, the
task (cross-entropy) gradient 0.9 - delta, so the optimizer follows the distillation loss more
steadily. Each step takes two backward passes: `loss_kd.backward(retain_graph=True)`,
`opt.step_kd()` (stores the distillation gradients), then `loss_task.backward()`, `opt.step()`
(applies both). A parameter with only one of the two gradients gets the mean momentum and
carries the weight decay on that one; dampening is 0 and a buffer starts as its first gradient,
as in mdistiller.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class DOT(torch.optim.Optimizer):
    """Distillation-oriented SGD: `step_kd()` after the distillation backward, `step()` after
    the task backward. `momentum` is the recipe's (0.9); delta splits it per loss."""

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        delta: float = 0.075,
        weight_decay: float = 0.0,
    ) -> None:
        if not 0.0 <= delta <= momentum:
            raise ValueError(f"DOT delta must be in [0, momentum={momentum}], got {delta}")
        defaults = {"lr": lr, "momentum": momentum, "delta": delta, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self._kd_grads: dict[int, Tensor] = {}

    @torch.no_grad()
    def step_kd(self) -> None:
        """Keep the current gradients as the distillation gradients (zero_grad follows)."""
        self._kd_grads = {
            id(p): p.grad.detach().clone()
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        }

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        """Apply the task gradients (now in .grad) and the kept distillation gradients."""
        kd = self._kd_grads
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            m_task = group["momentum"] - group["delta"]
            m_kd = group["momentum"] + group["delta"]
            mean = (m_task + m_kd) / 2
            task = [p for p in group["params"] if p.grad is not None]
            task_ids = {id(p) for p in task}
            for p in task:  # the task update, with weight decay
                d = p.grad.add(p, alpha=wd) if wd else p.grad
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(m_task if id(p) in kd else mean).add_(d)
                p.add_(buf, alpha=-lr)
            for p in group["params"]:  # then the distillation update
                g = kd.get(id(p))
                if g is None:
                    continue
                state = self.state[p]
                buf = state.get("momentum_kd_buffer")
                if buf is None:  # first value: the raw gradient, as mdistiller
                    buf = state["momentum_kd_buffer"] = g.clone()
                elif id(p) in task_ids:  # weight decay went with the task gradient
                    buf.mul_(m_kd).add_(g)
                else:
                    buf.mul_(mean).add_(g.add(p, alpha=wd) if wd else g)
                p.add_(buf, alpha=-lr)
        self._kd_grads = {}
