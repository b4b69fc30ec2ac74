"""The two training stages and the evaluations, on tensors held on the device.

Images stay uint8 on the device and are normalised one batch at a time; shuffling and noise
come from derived seeds. Each stage asks its model only for the head its loss reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import seeds
from ..config import ExperimentConfig
from ..data.datasets import ImageData
from ..data.noise import noise_batch
from ..geometry.similarity import RepSummary, summarize
from ..models import SplitHeadNet
from .augment import Augmenter
from .losses import get_loss
from .optim import Adam

NoiseNorm = tuple[tuple[float, ...], tuple[float, ...]] | None  # (mean, std) or None


class Normalizer:
    """(x / 255 - mean) / std for uint8 image batches, as one multiply and one subtract.

    `take` gathers rows into reused buffers: fresh multi-MB tensors every step cost more in
    page faults than the conversion itself.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
        self.mean, self.std = tuple(mean), tuple(std)
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * s), m / s
        self._u8: torch.Tensor | None = None
        self._f32: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mul_(self.scale).sub_(self.shift)

    def take(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Normalised x[idx], written into buffers reused across calls (valid until the next)."""
        n = idx.numel()
        if self._u8 is None or self._u8.shape[0] < n or self._u8.shape[1:] != x.shape[1:]:
            self._u8 = torch.empty((n, *x.shape[1:]), dtype=x.dtype, device=x.device)
            self._f32 = torch.empty((n, *x.shape[1:]), dtype=torch.float32, device=x.device)
        u8, f32 = self._u8[:n], self._f32[:n]  # type: ignore[index]
        torch.index_select(x, 0, idx, out=u8)
        return f32.copy_(u8).mul_(self.scale).sub_(self.shift)


def norm_constants(config: ExperimentConfig, data: ImageData) -> tuple[tuple[float, ...], ...]:
    """(mean, std) for inputs: --data-mean/--data-std when given, else the dataset's own."""
    if config.data_mean is not None and config.data_std is not None:
        return config.data_mean, config.data_std
    return tuple(data.mean), tuple(data.std)


@contextmanager
def _bar(total: int, desc: str, enabled: bool) -> Iterator[tqdm]:
    bar = tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _adam(net: SplitHeadNet, lr: float, heads: tuple[str, ...]) -> Adam | None:
    """Adam over the trainable parameters that the loss can reach (features + `heads`)."""
    params = [
        p
        for name, layer in net.layers.items()
        if name not in ("class_head", "aux_head") or name in heads
        for p in layer.parameters()
        if p.requires_grad
    ]
    return Adam(params, lr=lr) if params else None


def train_teacher(
    config: ExperimentConfig,
    net: SplitHeadNet,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    norm: Normalizer,
    progress: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
) -> float:
    """Adam + cross-entropy on class_head over the labelled set; returns last epoch's mean loss.

    `on_epoch(epoch, mean_loss)` is called after every epoch (diagnostics)."""
    n, bs = train_x.shape[0], config.data_bsize
    steps = (n + bs - 1) // bs
    opt = _adam(net, config.teacher_lr, ("class_head",))
    augment = Augmenter(config.augment, config.seed, norm.mean, norm.std)
    net.train()
    last = float("nan")
    with _bar(config.teacher_epochs * steps, "teacher", progress) as bar:
        for epoch in range(config.teacher_epochs):
            gen = seeds.generator(config.seed, "dataloader", epoch)
            perm = torch.randperm(n, generator=gen).to(train_x.device)
            total = torch.zeros((), device=train_x.device)
            for i in range(steps):
                idx = perm[i * bs : (i + 1) * bs]
                x = augment(norm.take(train_x, idx), epoch, i)
                loss = F.cross_entropy(net.class_logits(x), train_y[idx])
                if opt is not None:
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                total += loss.detach() * idx.numel()
                bar.update(1)
                if progress and i % 10 == 0:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
            last = total.item() / n
            if on_epoch is not None:
                on_epoch(epoch, last)
    return last


def student_noise(
    config: ExperimentConfig,
    step: int,
    device: torch.device,
    norm: NoiseNorm = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Noise batch `step` of the student's stream (independent of steps per epoch and epochs).

    `out` (CPU, float32) is filled in place when given, to avoid a fresh buffer every step.
    """
    x = noise_batch(
        config.seed,
        ("student_noise",),
        step,
        config.noise_dist,
        config.noise_bsize,
        config.input_shape,
        config.perlin_res,
        norm,
        out=out,
    )
    return x.to(device)


def noise_pool(config: ExperimentConfig, norm: NoiseNorm = None) -> torch.Tensor:
    """The fixed noise set of `--noise-pool N` images (CPU), drawn once from a derived seed."""
    return noise_batch(
        config.seed,
        ("noise_pool",),
        0,
        config.noise_dist,
        config.noise_pool,
        config.input_shape,
        config.perlin_res,
        norm,
    )


def _student_batches(
    config: ExperimentConfig, epoch: int, device: torch.device, norm: NoiseNorm, state: dict
) -> Iterator[torch.Tensor]:
    """The noise batches of one student epoch: fresh draws, or a reshuffled pass over the pool."""
    if not config.noise_pool:
        buf = state.setdefault("buf", torch.empty((config.noise_bsize, *config.input_shape)))
        for i in range(config.noise_steps):
            yield student_noise(config, epoch * config.noise_steps + i, device, norm, buf)
        return
    if "pool" not in state:
        state["pool"] = noise_pool(config, norm).to(device)
    pool = state["pool"]
    gen = seeds.generator(config.seed, "noise_pool_shuffle", epoch)
    perm = torch.randperm(pool.shape[0], generator=gen).to(device)
    for i in range(0, pool.shape[0], config.noise_bsize):
        yield pool[perm[i : i + config.noise_bsize]]


def student_steps(config: ExperimentConfig) -> int:
    """Optimizer steps per student epoch."""
    if config.noise_pool:
        return -(-config.noise_pool // config.noise_bsize)
    return config.noise_steps


def train_student(
    config: ExperimentConfig,
    student: SplitHeadNet,
    teacher: SplitHeadNet,
    device: torch.device,
    noise_norm: NoiseNorm = None,
    progress: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
) -> float:
    """Adam on the distillation loss between aux heads over noise; last epoch's mean loss.

    Noise is fresh every step (`noise_steps` batches per epoch), or with `--noise-pool N` one
    pass per epoch over a fixed set of N images in a new order (the mean is per sample then).
    """
    loss_fn = get_loss(config.distill_loss)
    opt = _adam(student, config.student_lr, ("aux_head",))
    teacher.eval()
    student.train()
    steps = student_steps(config)
    last = float("nan")
    state: dict = {}
    with _bar(config.student_epochs * steps, "student", progress) as bar:
        for epoch in range(config.student_epochs):
            total = torch.zeros((), device=device)
            seen = 0
            for i, x in enumerate(_student_batches(config, epoch, device, noise_norm, state)):
                with torch.no_grad():
                    target = teacher.aux_logits(x)
                loss = loss_fn(student.aux_logits(x), target, config)
                if opt is not None:
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                weight = x.shape[0] if config.noise_pool else 1
                total += loss.detach() * weight
                seen += weight
                bar.update(1)
                if progress and i % 10 == 0:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.5f}")
            last = total.item() / seen
            if on_epoch is not None:
                on_epoch(epoch, last)
    return last


EVAL_CHUNK_BYTES = 64 << 20  # largest activation of one evaluation chunk (float32)
MIN_EVAL_CHUNK, MAX_EVAL_CHUNK = 64, 8192


def eval_chunk(net: SplitHeadNet) -> int:
    """Rows per evaluation chunk: its largest activation within EVAL_CHUNK_BYTES.

    Measured on the figure-3 CNN (2 cores): 580-row chunks cost ~5 % more than 2000-row ones
    and hold a quarter of the memory; L3-sized chunks (~150 rows) cost 30 % more, as oneDNN's
    convolutions block for the cache themselves.
    """
    rows = EVAL_CHUNK_BYTES // (4 * net.max_activation)
    return int(min(MAX_EVAL_CHUNK, max(MIN_EVAL_CHUNK, rows)))


def chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows: int) -> torch.Tensor:
    """`fn(x)` computed `rows` rows at a time (for row-wise functions: the same rows)."""
    if x.shape[0] <= rows:
        return fn(x)
    return torch.cat([fn(x[i : i + rows]) for i in range(0, x.shape[0], rows)])


class Evaluation(NamedTuple):
    """Accuracy and mean cross-entropy on a labelled set, and the kept rows' layer summaries."""

    acc: float
    loss: float
    reps: dict[str, RepSummary]  # hidden layer -> CKA/RSA summary on the kept rows ({}: none)


@torch.no_grad()
def evaluate(
    net: SplitHeadNet,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Normalizer,
    chunk: int | None = None,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of class_head on a labelled set.

    The network runs `chunk` rows at a time (default `eval_chunk(net)`); the metrics are then
    computed on all logits at once, so they do not depend on the chunk size.
    """
    acc, loss, _ = evaluate_keeping(net, x, y, norm, None, chunk)
    return acc, loss


@torch.no_grad()
def evaluate_keeping(
    net: SplitHeadNet,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Normalizer,
    keep: torch.Tensor | None,
    chunk: int | None = None,
) -> Evaluation:
    """`evaluate`, plus every hidden layer's CKA/RSA summary on rows `keep`, in the same pass.

    The kept rows run first (in chunks), with their layer outputs tapped; the other rows
    follow, gathered per chunk (not into `norm.take`'s buffers, which would stay as large as an
    evaluation chunk in every prepared run of a stack). Logits go back to their rows before
    the metrics, so accuracy and loss are `evaluate`'s whatever `keep` is.
    """
    net.eval()
    rows = chunk or eval_chunk(net)
    if keep is None:
        logits = chunked(lambda xb: net.class_logits(norm(xb)), x, rows)
        reps: dict[str, RepSummary] = {}
    else:
        first, reps = kept_forward(net, x, keep, norm, rows)
        rest = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        rest[keep] = False
        rest = rest.nonzero().squeeze(1)
        logits = first.new_empty(x.shape[0], first.shape[1])
        logits[keep] = first
        for i in range(0, rest.numel(), rows):
            idx = rest[i : i + rows]
            logits[idx] = net.class_logits(norm(x.index_select(0, idx)))
    correct = (logits.argmax(dim=1) == y).sum()
    loss = F.cross_entropy(logits, y, reduction="sum").double()
    n = x.shape[0]
    return Evaluation(correct.item() / n, loss.item() / n, reps)


@torch.no_grad()
def kept_forward(
    net: SplitHeadNet, x: torch.Tensor, keep: torch.Tensor, norm: Normalizer, rows: int
) -> tuple[torch.Tensor, dict[str, RepSummary]]:
    """(class logits, hidden-layer summaries) of rows `keep` of x, `rows` at a time.

    Each layer's outputs of the kept rows are held until the last chunk (the sum of the layer
    outputs, N x 4 bytes each, e.g. 34 MB for figure 3's CNN at N = 1000), then reduced to an
    N x N summary.
    """
    net.eval()
    parts: dict[str, list[torch.Tensor]] = {}

    def tap(name: str, h: torch.Tensor) -> None:
        parts.setdefault(name, []).append(h.flatten(1))  # no layer writes a later one in place

    logits = []
    for i in range(0, keep.numel(), rows):
        h = net.features(norm(x.index_select(0, keep[i : i + rows])), tap)
        logits.append(net.head_logits("class_head", h))
    reps = {name: summarize(torch.cat(p) if len(p) > 1 else p[0]) for name, p in parts.items()}
    return torch.cat(logits), reps


@torch.no_grad()
def aux_mse(
    config: ExperimentConfig,
    student: SplitHeadNet,
    teacher: SplitHeadNet,
    device: torch.device,
    which: str,
    noise_norm: NoiseNorm = None,
    chunk: int | None = None,
) -> float:
    """MSE between student and teacher aux heads on the evaluation noise draw `which`.

    Both nets run `chunk` rows at a time (default: by the larger's `eval_chunk`); each noise
    batch's MSE is taken on its whole outputs, so the result does not depend on the chunk size.
    """
    student.eval()
    teacher.eval()
    rows = chunk or min(eval_chunk(student), eval_chunk(teacher))
    total = torch.zeros((), device=device, dtype=torch.float64)
    for b in range(config.eval_noise_batches):
        x = noise_batch(
            config.seed,
            ("eval_noise", which),
            b,
            config.noise_dist,
            config.eval_noise_bsize,
            config.input_shape,
            config.perlin_res,
            noise_norm,
        ).to(device)
        s = chunked(student.aux_logits, x, rows)
        t = chunked(teacher.aux_logits, x, rows)
        total += F.mse_loss(s, t).double()
    return total.item() / config.eval_noise_batches
