"""The KD datasets as uint8 tensors with their normalisation constants (read once per process)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import KDConfig


@dataclass(frozen=True, eq=False)
class KDData:
    """Train and test images (uint8 [N, 3, H, W]) and labels (int64), with mean and std."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]


_CACHE: dict[tuple[str, str], KDData] = {}


def load_kd_data(config: KDConfig, progress: bool = False) -> KDData:
    """`config.dataset` from `config.data_dir` (downloaded and verified when missing)."""
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
