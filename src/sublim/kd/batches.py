"""Where the KD loop's batches come from: one interface over an in-memory dataset and a streamed
one, so `kd.train` runs the same steps on both.

A source gives, per epoch, (x, y, idx) batches: x normalised float32 on the device, y the labels
and idx the images' positions in the training set (CRD's memory banks), plus the test set as
(x, y) batches. `MemoryBatches` draws a seeded permutation per epoch and normalises and augments
on the device (crop + flip as one grid_sample seeded by (seed, epoch, step)), exactly as the loop
always has. `StreamBatches` reads ImageNet with `sublim.data.imagenet_loader`: worker processes
decode each image and apply RandomResizedCrop + flip seeded by (seed, epoch, index), batches come
over as uint8 and are normalised on the device. Both orders are functions of (seed, epoch), so a
run resumed at an epoch boundary continues as if it had never stopped; unreadable files are
dropped from their batch (which comes out smaller), warned about once and counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from .. import seeds
from .config import KDConfig

if TYPE_CHECKING:
    from ..engine.augment import Augmenter
    from ..engine.train import Normalizer
    from .data import StreamData

Batch = tuple[Tensor, Tensor, Tensor]  # x (normalised, on the device), labels, dataset indices


class Source(Protocol):
    """What the training loop reads batches from."""

    device: torch.device
    steps: int  # training batches per epoch (a streamed epoch may give fewer: empty batches)

    def epoch(self, epoch: int) -> Iterator[Batch]: ...

    def test(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    @property
    def skipped_files(self) -> int: ...


def default_workers() -> int:
    """Decoding processes when --workers is not given: min(8, the CPU cores this process may
    use)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(8, cores)


class MemoryBatches:
    """Batches of uint8 tensors already on the device (`KDData` moved there)."""

    def __init__(
        self,
        config: KDConfig,
        train_x: Tensor,
        train_y: Tensor,
        norm: Normalizer,
        augment: Augmenter,
        test_x: Tensor | None = None,
        test_y: Tensor | None = None,
    ) -> None:
        self.config, self.norm, self.augment = config, norm, augment
        self.train_x, self.train_y, self.test_x, self.test_y = train_x, train_y, test_x, test_y
        self.device = train_x.device
        n, bs = train_x.shape[0], config.batch_size
        self.steps = n // bs if config.drop_last else (n + bs - 1) // bs

    @property
    def skipped_files(self) -> int:
        return 0

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The epoch's batches in the order of a permutation seeded by (seed, epoch)."""
        config, x_all, y_all = self.config, self.train_x, self.train_y
        n, bs = x_all.shape[0], config.batch_size
        perm = torch.randperm(n, generator=seeds.generator(config.seed, "kd", "shuffle", epoch))
        perm = perm.to(self.device)
        for step in range(self.steps):
            i = step * bs
            idx = perm[i : i + bs]
            # normalised into reused buffers: valid until the next batch is drawn
            yield self.augment(self.norm.take(x_all, idx), epoch, i // bs), y_all[idx], idx

    def test(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The test set in order: batches of 1000, or with --eval-batches reference the
        KD_wo_CE code's floor(N / batch) batches of --batch-size."""
        assert self.test_x is not None and self.test_y is not None
        reference = self.config.eval_batches == "reference"
        bsize = self.config.batch_size if reference else 1000
        return memory_test_batches(self.test_x, self.test_y, self.norm, bsize, reference)


def memory_test_batches(
    x_all: Tensor, y_all: Tensor, norm: Normalizer, bsize: int, reference: bool
) -> Iterator[tuple[Tensor, Tensor]]:
    """(normalised x, y) in order, batches of `bsize`; `reference`: the last partial one
    dropped."""
    n = x_all.shape[0] // bsize * bsize if reference else x_all.shape[0]
    for i in range(0, n, bsize):
        yield norm(x_all[i : i + bsize]), y_all[i : i + bsize]


class StreamBatches:
    """Batches of a `StreamData` (ImageNet) decoded by `workers` loader processes (--workers;
    0: in this process) and normalised on the device. `close` ends the worker processes."""

    def __init__(self, config: KDConfig, data: StreamData, device: torch.device) -> None:
        from ..data.imagenet_loader import imagenet_loader

        self.device = device
        workers = default_workers() if config.workers is None else config.workers
        pin = device.type == "cuda"
        bs = config.batch_size
        self.train_loader = imagenet_loader(
            data.train,
            bs,
            seed=config.seed,
            workers=workers,
            pin_memory=pin,
            drop_last=config.drop_last,
        )
        self.test_loader = imagenet_loader(data.test, bs, workers=workers, pin_memory=pin)
        for i, loader in enumerate((self.train_loader, self.test_loader)):
            # the loader draws its workers' base seed from this generator, not the global RNG
            # (which Dropout reads and checkpoints carry): resumed runs stay identical
            loader.generator = seeds.generator(config.seed, "kd", "loader", i)
        self.steps = len(self.train_loader)

    @property
    def skipped_files(self) -> int:
        """Distinct unreadable files met so far in both splits."""
        return self.train_loader.skipped_files + self.test_loader.skipped_files

    def _to_device(self, x: Tensor) -> Tensor:
        return x.to(self.device, non_blocking=True)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Epoch `epoch`'s batches: its seeded order, each image's seeded crop and flip."""
        from ..data.imagenet import normalize_batch

        self.train_loader.set_epoch(epoch)
        for images, labels, idx in self.train_loader:
            x = normalize_batch(self._to_device(images))
            yield x, self._to_device(labels), self._to_device(idx)

    def test(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The test split in file order, resized to 256 and centre-cropped to 224."""
        from ..data.imagenet import normalize_batch

        for images, labels, _ in self.test_loader:
            yield normalize_batch(self._to_device(images)), self._to_device(labels)

    def close(self) -> None:
        """End the loaders' worker processes (persistent across epochs until now)."""
        for loader in (self.train_loader, self.test_loader):
            loader._iterator = None  # its finaliser shuts the workers down


def make_source(
    config: KDConfig,
    data: object,
    device: torch.device,
    norm: Normalizer,
    augment: Augmenter,
) -> MemoryBatches | StreamBatches:
    """The batches of `data`: a `StreamData` streamed, a `KDData` moved to the device once."""
    from .data import StreamData

    if isinstance(data, StreamData):
        return StreamBatches(config, data, device)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)  # type: ignore[attr-defined]
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)  # type: ignore[attr-defined]
    return MemoryBatches(config, train_x, train_y, norm, augment, test_x, test_y)
