"""Batches of an `ImageNetFolder` from DataLoader worker processes, in a seeded per-epoch order.

    loader = imagenet_loader(ImageNetFolder(root, "train", seed=s), 256, seed=s, workers=8,
                             pin_memory=True)
    for epoch in range(start, epochs):
        loader.set_epoch(epoch)                      # resumable: set_epoch(epoch, start=k)
        for images, labels, indices in loader:       # uint8 [B, 3, 224, 224], int64, int64
            x = normalize_batch(images.to(device, non_blocking=True))

The sampler yields (epoch, index) pairs, so each sample's augmentation depends only on (seed,
epoch, index): 0 or N workers, persistent or not, give the same batches; the order of an epoch
is a permutation drawn from (seed, epoch) alone, so a resumed run replays it (`start` skips the
samples already seen). Unreadable files are dropped from their batch (which comes out smaller,
or not at all when empty), warned about once per file in the main process and counted:
`loader.skipped_files` (distinct files; also `dataset.skipped_files`) and
`loader.skipped_samples` (drops, repeats across epochs included), for metrics.json.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from sublim.data.folders import _default_warn
from sublim.data.imagenet import ImageNetFolder, Unreadable
from sublim.seeds import generator

Sample = tuple[Tensor, int, int] | Unreadable
Batch = tuple[Tensor, Tensor, Tensor]


class EpochSampler(Sampler[tuple[int, int]]):
    """(epoch, index) for the samples of one epoch: a permutation of range(n) drawn from
    (seed, epoch) with `shuffle`, else range(n); from position `start` on."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch the next iteration yields, skipping its first `start` samples."""
        if not 0 <= start <= self.n:
            raise ValueError(f"start {start} outside 0..{self.n}")
        self.epoch, self.start = int(epoch), int(start)

    def order(self, epoch: int) -> Tensor:
        """The sample indices of `epoch`, in order."""
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=generator(self.seed, "imagenet-order", epoch))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, i) for i in self.order(epoch)[self.start :].tolist())

    def __len__(self) -> int:
        return self.n - self.start


def collate(samples: Sequence[Sample]) -> tuple[Tensor, Tensor, Tensor, list[Unreadable]]:
    """Stack the decoded samples; set the unreadable ones apart (the loader counts them)."""
    bad = [s for s in samples if isinstance(s, Unreadable)]
    good = [s for s in samples if not isinstance(s, Unreadable)]
    if not good:
        empty = torch.empty(0, dtype=torch.int64)
        return torch.empty(0, dtype=torch.uint8), empty, empty, bad
    images = torch.stack([s[0] for s in good])
    labels = torch.tensor([s[1] for s in good], dtype=torch.int64)
    indices = torch.tensor([s[2] for s in good], dtype=torch.int64)
    return images, labels, indices, bad


class ImageNetLoader(DataLoader):
    """A DataLoader over an `ImageNetFolder` with an `EpochSampler`; iterating yields (images,
    labels, indices) and records unreadable files (see the module)."""

    def __init__(
        self,
        dataset: ImageNetFolder,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = False,
        prefetch_factor: int = 2,
        persistent_workers: bool = True,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.warn = warn or _default_warn
        self.skipped_samples = 0
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=EpochSampler(len(dataset), seed, shuffle),
            num_workers=workers,
            collate_fn=collate,
            pin_memory=pin_memory,
            drop_last=drop_last,
            prefetch_factor=prefetch_factor if workers > 0 else None,
            persistent_workers=persistent_workers and workers > 0,
        )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch `epoch` next, from its sample `start` on (a resumed epoch)."""
        self.sampler.set_epoch(epoch, start)

    @property
    def skipped_files(self) -> int:
        """Distinct unreadable files met so far."""
        return self.dataset.skipped_files

    def _record(self, bad: Sequence[Unreadable]) -> None:
        seen = self.dataset.unreadable
        for index, reason in bad:
            self.skipped_samples += 1
            if index not in seen:
                seen[index] = reason
                self.warn(f"skipping unreadable image {self.dataset.path(index)} ({reason})")

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        for images, labels, indices, bad in super().__iter__():
            if bad:
                self._record(bad)
            if len(indices):
                yield images, labels, indices


def imagenet_loader(
    dataset: ImageNetFolder,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool | None = None,
    workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    prefetch_factor: int = 2,
    persistent_workers: bool = True,
    warn: Callable[[str], None] | None = None,
) -> ImageNetLoader:
    """A DataLoader of `dataset` decoding in `workers` processes (0: in this one); `shuffle`
    defaults to the dataset's `augment` (train: shuffled, val: in file order)."""
    return ImageNetLoader(
        dataset,
        batch_size,
        seed=seed,
        shuffle=dataset.augment if shuffle is None else shuffle,
        workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        prefetch_factor=prefetch_factor,
        persistent_workers=persistent_workers,
        warn=warn,
    )
