"""CRD's memory banks and contrast sampler (Tian et al., ICLR 2020; RepDistiller's `crd/`).

Two banks of one embedding per training image (student's and teacher's), the fixed NCE
normalisers Z, and the draw of one positive and K negatives per anchor. Everything works on
whole tensors; nothing gathers the B x (K+1) x D bank rows RepDistiller gathers (537 MB per side
at K = 16384, batch 64, D = 128): the B anchors are scored against the whole bank at once
(N x D by D x B, a matmul) and the B x (K+1) scores are gathered from that, which gives the same
numbers. Negatives come from a generator the caller seeds, so a resumed run draws the same ones.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Mode = Literal["exact", "relax"]
Negatives = Literal["without_replacement", "with_replacement"]
_BIG = 2**62  # uniform integers below m as randint(0, 2**62) % m: bias below 2**-45


def class_blocks(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(order, start, count): the training indices sorted by class (stable), and where each
    class's block starts in that order and how long it is. Class c's negatives are the
    positions outside [start[c], start[c] + count[c])."""
    order = torch.argsort(labels, stable=True)
    count = torch.bincount(labels, minlength=int(labels.max()) + 1)
    return order, count.cumsum(0) - count, count


def _uniform_below(m: Tensor, cols: int, generator: torch.Generator) -> Tensor:
    """[len(m), cols] integers, row b uniform in [0, m[b])."""
    draw = torch.randint(0, _BIG, (m.numel(), cols), generator=generator, device=m.device)
    return draw % m[:, None]


def _distinct_below(m: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """[len(m), k] integers, row b k distinct ones from [0, m[b]) (a uniform k-subset, in no
    particular order): the positions of the k smallest of max(m) uniform keys, keys at or past
    m[b] set above any key."""
    width = int(m.max())
    keys = torch.rand(m.numel(), width, generator=generator, device=m.device)
    if bool((m != width).any()):
        keys.masked_fill_(torch.arange(width, device=m.device) >= m[:, None], 2.0)
    return keys.topk(k, dim=1, largest=False, sorted=False).indices


def draw_contrast(
    index: Tensor,
    labels: Tensor,
    blocks: tuple[Tensor, Tensor, Tensor],
    k: int,
    *,
    mode: Mode,
    negatives: Negatives,
    generator: torch.Generator,
) -> Tensor:
    """[B, K+1] training indices per anchor `index[b]`: column 0 its positive (itself for
    'exact', a random image of its class for 'relax'), then K negatives from the other classes.

    'without_replacement' is RepDistiller's CIFAR rule: K distinct negatives (a uniform
    K-subset of the candidates) where the anchor's class leaves at least K candidates, else K
    drawn with replacement (its `replace = k > len(cls_negative)`); 'with_replacement' draws
    them all independently (mdistiller's ImageNet sampler). A negative is drawn as an offset
    among the N - n_c candidates, shifted past class c's block of the class-sorted indices.
    Draw order from `generator`: relax positives, then without-, then with-replacement rows."""
    order, start, count = blocks
    c = labels[index]
    lo, size = start[c], count[c]
    m = labels.numel() - size  # candidates per anchor
    if mode == "exact":
        pos = index
    else:
        pos = order.index_select(0, lo + _uniform_below(size, 1, generator)[:, 0])
    distinct = (
        m >= k if negatives == "without_replacement" else torch.zeros_like(m, dtype=torch.bool)
    )
    if bool(distinct.all()):
        u = _distinct_below(m, k, generator)
    elif not bool(distinct.any()):
        u = _uniform_below(m, k, generator)
    else:
        u = torch.empty(index.numel(), k, dtype=torch.long, device=index.device)
        u[distinct] = _distinct_below(m[distinct], k, generator)
        u[~distinct] = _uniform_below(m[~distinct], k, generator)
    u = torch.where(u >= lo[:, None], u + size[:, None], u)  # past the own class's block
    neg = order.index_select(0, u.flatten()).view(u.shape)
    return torch.cat([pos[:, None], neg], dim=1)


def nce_loss(scores: Tensor, log_z: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE loss (paper eq. 18; RepDistiller's ContrastLoss) from [B, K+1] scores
    s = <v, bank row> / T, column 0 the positive, and log Z: with x = exp(s) / Z and
    c = K / n_data (K noise samples from a uniform Pn),
    -(sum_b log(x0 / (x0 + c + eps)) + sum_{b, k>=1} log(c / (xk + c + eps))) / B,
    computed with log(x + c + eps) = L + softplus(s - L) - log Z, L = log(c + eps) + log Z, as
    sum_b (s_b0 - L) + B K log(c / (c + eps)) - sum_{b, k>=0} softplus(s_bk - L), negated, / B:
    no exp of the scores, one pass over them, and small terms summed (no cancellation)."""
    b, k = scores.shape[0], scores.shape[1] - 1
    c = k / n_data
    shifted = scores - (math.log(c + eps) + log_z)
    spread = F.softplus(shifted).sum()
    return -(shifted[:, 0].sum() + b * k * math.log(c / (c + eps)) - spread) / b


class ContrastMemory(nn.Module):
    """The two memory banks (N x D, one row per training image), Z and the class blocks.

    Buffers: `memory_s` / `memory_t` (RepDistiller's memory_v1 / memory_v2: the student's and
    the teacher's embeddings, momentum-averaged) and `z` = [Z_s, Z_t] (its Z_v1, Z_v2: -1 until
    the first call sets them to mean(out) * N), all in the state dict; the labels and class
    blocks (`bind`) are derived from the data and left out of it. Until `bind` the banks have
    no rows; loading a state dict gives them the saved shape.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("memory_s", torch.empty(0, dim))
        self.register_buffer("memory_t", torch.empty(0, dim))
        self.register_buffer("z", torch.full((2,), -1.0))
        for name in ("labels", "order", "start", "count"):
            self.register_buffer(name, torch.empty(0, dtype=torch.long), persistent=False)

    @property
    def n_data(self) -> int:
        return self.memory_s.shape[0]

    def bind(self, labels: Tensor, generator: torch.Generator) -> None:
        """Take the training labels (N of them); fill empty banks with U(-a, a) rows,
        a = 1 / sqrt(D / 3) (RepDistiller's init, rows not normalised), drawn on the CPU from
        `generator`. Banks that already hold N rows (a loaded checkpoint) are kept."""
        device = self.memory_s.device
        labels = labels.to(device=device, dtype=torch.long).flatten()
        n = labels.numel()
        if self.n_data not in (0, n):
            raise ValueError(f"the memory banks hold {self.n_data} rows, the training set {n}")
        if self.n_data == 0:
            a = 1.0 / math.sqrt(self.dim / 3)
            for name in ("memory_s", "memory_t"):
                bank = torch.rand(n, self.dim, generator=generator, dtype=torch.float64)
                setattr(self, name, (bank * (2 * a) - a).to(device, self.memory_s.dtype))
        self.labels = labels
        self.order, self.start, self.count = class_blocks(labels)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in ("memory_s", "memory_t"):  # an unbound module takes the saved bank size
            saved = state_dict.get(prefix + name)
            mine = getattr(self, name)
            if isinstance(saved, Tensor) and mine.numel() == 0 and saved.shape != mine.shape:
                setattr(self, name, torch.empty(saved.shape, dtype=mine.dtype, device=mine.device))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def scores(
        self, v_s: Tensor, v_t: Tensor, idx: Tensor, temperature: float
    ) -> tuple[Tensor, Tensor]:
        """(s_s, s_t), each [B, K+1]: <bank row, anchor> / T at the rows `idx`, the student
        anchors against the teacher bank and the teacher anchors against the student bank
        (RepDistiller's out_v1 = exp(s_s) / Z_s, out_v2 = exp(s_t) / Z_t). The first call
        sets Z = mean(exp(s)) * N from its batch.

        The anchors are scored against the whole bank (B x N) and the sampled entries gathered:
        the same values as gathering the rows first, without the B x (K+1) x D copy."""
        s_s = torch.gather((v_s / temperature) @ self.memory_t.t(), 1, idx)
        s_t = torch.gather((v_t / temperature) @ self.memory_s.t(), 1, idx)
        if bool(self.z[0] < 0):  # the first call fixes Z from this batch (RepDistiller)
            with torch.no_grad():
                self.z.copy_(torch.stack([s_s.exp().mean(), s_t.exp().mean()]) * self.n_data)
        return s_s, s_t

    @torch.no_grad()
    def update(self, index: Tensor, v_s: Tensor, v_t: Tensor, momentum: float) -> None:
        """Rows `index` of each bank <- normalize(m * row + (1 - m) * embedding).

        Out of place: the banks the scores were computed from stay as they were for backward
        (the autograd graph keeps them), as RepDistiller's gathered copies do."""
        for name, v in (("memory_s", v_s), ("memory_t", v_t)):
            bank = getattr(self, name)
            rows = bank.index_select(0, index) * momentum + v.detach().to(bank.dtype) * (
                1 - momentum
            )
            rows = rows / rows.pow(2).sum(1, keepdim=True).sqrt()
            setattr(self, name, bank.index_copy(0, index, rows))
