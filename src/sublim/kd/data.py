"""The KD datasets: in memory as uint8 tensors with their normalisation constants (read once per
process), or, for the streamed ones (ImageNet), the file indexes their loaders decode from."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import DataError
from .config import STREAMED, KDConfig

if TYPE_CHECKING:
    from ..data.imagenet import ImageNetFolder


@dataclass(frozen=True, eq=False)
class KDData:
    """Train and test images (uint8 [N, 3, H, W]) and labels (int64), with mean and std."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True, eq=False)
class StreamData:
    """A dataset read from disk as it trains: the train and test splits' file indexes (each
    image decoded and augmented in loader workers, `kd.batches`), the training labels (known
    without decoding: CRD's memory banks) and the normalisation constants."""

    train: ImageNetFolder
    test: ImageNetFolder
    train_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]


_CACHE: dict[tuple[str, str], KDData] = {}
_INDEX: dict[str, tuple[ImageNetFolder, ImageNetFolder]] = {}
_IMAGENET_HELP = (
    "ImageNet cannot be downloaded automatically: get ILSVRC2012 (image-net.org, or Kaggle's "
    "ImageNet Object Localization Challenge) and give --data-dir the folder holding "
    "train/<wnid>/*.JPEG and val/ (val/<wnid>/ folders, or flat files with val_labels.txt, "
    "LOC_val_solution.csv or the devkit's ground truth + map_clsloc.txt)"
)


def imagenet_root(data_dir: str | Path) -> Path:
    """The ImageNet folder: `data_dir` itself, or `data_dir`/imagenet (mdistiller's place),
    whichever holds train/ and val/; DataError (one line, saying where to get it) otherwise."""
    base = Path(data_dir).expanduser()
    for root in (base, base / "imagenet"):
        if (root / "train").is_dir() and (root / "val").is_dir():
            return root
    found = [p for p in (base, base / "imagenet") if (p / "train").is_dir()]
    what = f"{found[0]} has train/ but no val/" if found else f"no train/ and val/ in {base}"
    raise DataError(f"ImageNet folder not found ({what} or {base / 'imagenet'}); {_IMAGENET_HELP}")


def check_kd_data(config: KDConfig) -> None:
    """Before an experiment starts: a streamed dataset's folder exists (the others are
    downloaded when missing)."""
    if config.dataset in STREAMED:
        imagenet_root(config.data_dir)


def load_kd_source(config: KDConfig, progress: bool = False) -> KDData | StreamData:
    """What the training loop reads: `load_kd_data`, or a streamed dataset's `StreamData`."""
    if config.dataset in STREAMED:
        return _stream(config)
    return load_kd_data(config, progress)


def _stream(config: KDConfig) -> StreamData:
    """ImageNet's two splits for one experiment: the folder indexed once per process, copied
    with this experiment's seed (augmentation), limits and its own unreadable-file record."""
    from ..data.folders import IMAGENET_MEAN, IMAGENET_STD
    from ..data.imagenet import ImageNetFolder

    root = imagenet_root(config.data_dir)
    key = str(root.resolve())
    if key not in _INDEX:
        _INDEX.clear()
        train = ImageNetFolder(root, "train")
        _INDEX[key] = (train, ImageNetFolder(root, "val", classes=train.classes))
    train, test = (
        _limited(split, limit, config.seed)
        for split, limit in zip(_INDEX[key], (config.train_limit, config.test_limit), strict=True)
    )
    labels = torch.from_numpy(train.labels.copy())
    return StreamData(train, test, labels, tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))


def _limited(split: ImageNetFolder, limit: int, seed: int) -> ImageNetFolder:
    """A copy of an indexed split: its first `limit` images (0: all), augmentation seeded by
    `seed`, no unreadable files recorded yet."""
    out = copy.copy(split)
    out.seed, out.unreadable = seed, {}
    if limit:
        out.files, out.labels = split.files[:limit], split.labels[:limit]
    return out


def load_kd_data(config: KDConfig, progress: bool = False) -> KDData:
    """`config.dataset` from `config.data_dir` (downloaded and verified when missing), in memory;
    DataError for a streamed dataset (see `load_kd_source`)."""
    if config.dataset in STREAMED:
        raise DataError(
            f"{config.dataset} is read from disk as it trains, never held in memory; this "
            "command needs an in-memory dataset"
        )
    key = (config.dataset, str(Path(config.data_dir).expanduser()))
    if key not in _CACHE:
        _CACHE.clear()  # one dataset at a time: they are large
        _CACHE[key] = _load(config.dataset, Path(key[1]), progress)
    data = _CACHE[key]
    if config.train_limit or config.test_limit:
        n, m = config.train_limit or None, config.test_limit or None
        data = KDData(
            data.train_x[:n],
            data.train_y[:n],
            data.test_x[:m],
            data.test_y[:m],
            data.mean,
            data.std,
        )
    return data


def _gray_to_cifar(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 1, 28, 28] -> [N, 3, 32, 32]: channel replicated, 2-pixel black border."""
    return torch.nn.functional.pad(x.expand(-1, 3, -1, -1), (2, 2, 2, 2)).contiguous()


def _load(name: str, root: Path, progress: bool) -> KDData:
    if name in ("mnist", "fashion-mnist", "kmnist"):
        from ..data.datasets import load_dataset

        d = load_dataset(name, root, progress=progress)
        mean, std = tuple(d.mean) * 3, tuple(d.std) * 3
        return KDData(
            _gray_to_cifar(d.train_x), d.train_y, _gray_to_cifar(d.test_x), d.test_y, mean, std
        )
    if name == "cifar10":
        from ..data.cifar import CIFAR10_MEAN as mean
        from ..data.cifar import CIFAR10_STD as std
        from ..data.cifar import load_cifar10 as load
    elif name == "cifar100":
        from ..data.cifar100 import CIFAR100_MEAN as mean
        from ..data.cifar100 import CIFAR100_STD as std
        from ..data.cifar100 import load_cifar100 as load
    elif name == "svhn":
        from ..data.svhn import SVHN_MEAN as mean
        from ..data.svhn import SVHN_STD as std
        from ..data.svhn import load_svhn as load
    else:
        from ..data.tinyimagenet import TINYIMAGENET_MEAN as mean
        from ..data.tinyimagenet import TINYIMAGENET_STD as std
        from ..data.tinyimagenet import load_tinyimagenet as load
    train_x, train_y, test_x, test_y = load(root, progress=progress)
    return KDData(train_x, train_y, test_x, test_y, tuple(mean), tuple(std))
