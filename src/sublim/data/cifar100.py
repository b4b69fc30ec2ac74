"""CIFAR-100 (fine labels) from the python-pickle files `train` and `test`, as uint8 tensors.

The files are looked up in `<data-dir>/cifar-100-python/`, then `<data-dir>/`; when absent they
are extracted from `cifar-100-python.tar.gz` (downloaded and verified when allowed), exactly as
for CIFAR-10. They are read with CIFAR-10's restricted unpickler, which only builds numpy arrays,
so a tampered file cannot run code.

"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sublim.data.cifar import _find, extract_members, read_pickled_images
from sublim.data.download import Failure, obtain_file, why_missing
from sublim.errors import DataError

CIFAR100_URLS = ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",)
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_MD5 = "md5:eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CIFAR100_CLASSES = 100
CIFAR100_DIR = "cifar-100-python"
_NAMES = ("train", "test")


def _read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickle as (uint8 [n, 3072], fine labels int64 [n]), checked."""
    return read_pickled_images(path, "CIFAR-100 pickle", b"fine_labels", CIFAR100_CLASSES)


def _missing_error(
    missing: Sequence[str],
    dirs: Sequence[Path],
    data_dir: Path,
    urls: Sequence[str],
    failures: Sequence[Failure] | None,
) -> DataError:
    return DataError(
        f"CIFAR-100: cannot find {', '.join(missing)} in {', '.join(str(d) for d in dirs)} "
        f"nor {CIFAR100_ARCHIVE} in {data_dir}; {why_missing(failures)}; fetch {CIFAR100_ARCHIVE} "
        f"from {' or '.join(urls)} into --data-dir {data_dir}"
    )


def load_cifar100(
    data_dir: Path,
    download: bool = True,
    progress: bool = False,
    urls: Sequence[str] = CIFAR100_URLS,
    checksum: str | Sequence[str] | None = CIFAR100_MD5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x uint8 [50000,3,32,32], train_y int64 [50000] fine labels, test_x, test_y).

    `urls` and `checksum` describe where the archive comes from (tests point them at a local one).
    """
    data_dir = Path(data_dir).expanduser()
    dirs = [data_dir / CIFAR100_DIR, data_dir]
    found = {name: _find(dirs, name) for name in _NAMES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        archive = data_dir / CIFAR100_ARCHIVE
        obtain_file(
            archive,
            urls,
            checksum,
            download,
            progress,
            lambda failures: _missing_error(missing, dirs, data_dir, urls, failures),
        )
        extract_members(archive, missing, dirs[0], "CIFAR-100")
        found.update({name: dirs[0] / name for name in missing})
    (train_x, train_y), (test_x, test_y) = (_read_split(found[n]) for n in _NAMES)  # type: ignore[arg-type]
    return (
        torch.from_numpy(train_x).reshape(-1, 3, 32, 32),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x).reshape(-1, 3, 32, 32),
        torch.from_numpy(test_y),
    )
