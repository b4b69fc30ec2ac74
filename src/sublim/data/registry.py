"""Dataset registry: file names, checksums, mirrors, class counts and normalisation per dataset.

Everything that differs between MNIST-style datasets lives here as data, so loading code has no
per-dataset branches and tests can inject a `DatasetInfo` of their own.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from sublim.errors import DataError

BUNDLED_MNIST_DIR = Path(__file__).parent / "bundled" / "mnist"

# The reference applies the MNIST constants to every dataset; kept per dataset so it can change.
_MNIST_MEAN = (0.1307,)
_MNIST_STD = (0.3081,)

_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclass(frozen=True)
class FileSpec:
    """One dataset file: its (gzip) name and the digests it may have ("sha256:<hex>", "md5:<hex>").

    Any listed digest is accepted; an empty tuple means no checksum is published for the file.
    """

    name: str
    checksums: tuple[str, ...] = ()

    @property
    def plain_name(self) -> str:
        """The file name without a trailing .gz (how torchvision stores extracted files)."""
        return self.name[:-3] if self.name.endswith(".gz") else self.name


@dataclass(frozen=True)
class DatasetInfo:
    """Everything needed to find, fetch, verify and decode one dataset (or one EMNIST split)."""

    name: str
    folder: str  # torchvision's folder name: <data_dir>/<folder>/raw/
    train_images: FileSpec
    train_labels: FileSpec
    test_images: FileSpec
    test_labels: FileSpec
    mirrors: tuple[str, ...]  # base URLs of the four files, or of `archive` when it is set
    num_classes: int  # base class count, after `label_offset` is applied
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transpose: bool = False  # images are stored with H and W swapped (EMNIST)
    label_offset: int = 0  # subtracted from stored labels (EMNIST letters: 1..26 -> 0..25)
    split: str | None = None  # EMNIST split name
    archive: FileSpec | None = None  # the four files are members of this zip (EMNIST)
    archive_dir: str = ""  # folder of the members inside the zip
    bundled: Path | None = None  # a copy shipped with sublim (MNIST)

    @property
    def files(self) -> tuple[FileSpec, FileSpec, FileSpec, FileSpec]:
        """The four files in the order train images, train labels, test images, test labels."""
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)

    @property
    def label(self) -> str:
        """How the user selects this dataset on the command line (for error messages)."""
        if self.split is None:
            return f"--dataset {self.name}"
        return f"--dataset {self.name} --emnist-split {self.split}"


# torchvision.datasets.MNIST / FashionMNIST / KMNIST `resources` (checked against
# pytorch/vision torchvision/datasets/mnist.py).
_TORCHVISION_MD5 = {
    "mnist": (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
    "fashion-mnist": (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ),
    "kmnist": (
        "bdb82020997e1d708af4cf47b453dcf7",
        "e144d726b3acfaa3e44228e80efcd344",
        "5c965bf0a639b31b8f53240b1b52f4d7",
        "7320c461ea6c1c855c0b718fb2a4b134",
    ),
}

_MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "kmnist": ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
}

_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}

# EMNIST ships as one zip; torchvision's EMNIST.md5 (same digest for both URLs, which serve the
# same file). The per-split members have no published checksum.
_EMNIST_ZIP = FileSpec("gzip.zip", ("md5:58c8d27c78d21e728a6bc7b3cc06412e",))
_EMNIST_MIRRORS = (
    "https://biometrics.nist.gov/cs_links/EMNIST/",
    "https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/",
)
# split -> (base class count, label offset)
_EMNIST_SPLITS = {
    "balanced": (47, 0),
    "letters": (26, 1),
    "byclass": (62, 0),
    "bymerge": (47, 0),
    "digits": (10, 0),
    "mnist": (10, 0),
}

_NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "kmnist": 10}


def dataset_names() -> list[str]:
    """The dataset names accepted by --dataset (lower case; matching ignores case)."""
    return [*_FOLDERS, "emnist"]


def emnist_splits() -> list[str]:
    """The split names accepted by --emnist-split (lower case; matching ignores case)."""
    return list(_EMNIST_SPLITS)


def _dataset_key(dataset: str) -> str:
    key = str(dataset).strip().lower().replace("_", "-")
    if key not in dataset_names():
        raise DataError(
            f"--dataset: unknown dataset {dataset!r}; choose one of {', '.join(dataset_names())}"
        )
    return key


def _split_key(emnist_split: str) -> str:
    key = str(emnist_split).strip().lower()
    if key not in _EMNIST_SPLITS:
        raise DataError(
            f"--emnist-split: unknown EMNIST split {emnist_split!r}; "
            f"choose one of {', '.join(emnist_splits())}"
        )
    return key


def base_num_classes(dataset: str, emnist_split: str = "balanced") -> int:
    """Class count of a dataset before any class selection; pure, so config validation can use it.

    `emnist_split` is ignored for datasets other than EMNIST.
    """
    key = _dataset_key(dataset)
    if key == "emnist":
        return _EMNIST_SPLITS[_split_key(emnist_split)][0]
    return _NUM_CLASSES[key]


@functools.lru_cache(maxsize=1)
def _bundled_sha256() -> dict[str, str]:
    """File name -> sha256 hex from the bundled SHA256SUMS ({} when it is not installed)."""
    try:
        text = (BUNDLED_MNIST_DIR / "SHA256SUMS").read_text()
    except OSError:
        return {}
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def _idx_dataset(key: str) -> DatasetInfo:
    specs = []
    for name, md5 in zip(_IDX_NAMES, _TORCHVISION_MD5[key], strict=True):
        checksums = [f"md5:{md5}"]
        if key == "mnist" and name in _bundled_sha256():
            # The bundled files are recompressed, so their digest differs from the mirrors'.
            checksums.insert(0, f"sha256:{_bundled_sha256()[name]}")
        specs.append(FileSpec(name, tuple(checksums)))
    bundled = BUNDLED_MNIST_DIR if key == "mnist" and _bundled_sha256() else None
    return DatasetInfo(
        key,
        _FOLDERS[key],
        *specs,
        mirrors=_MIRRORS[key],
        num_classes=_NUM_CLASSES[key],
        mean=_MNIST_MEAN,
        std=_MNIST_STD,
        bundled=bundled,
    )


def _emnist(split: str) -> DatasetInfo:
    num_classes, offset = _EMNIST_SPLITS[split]
    specs = [
        FileSpec(f"emnist-{split}-{part}-{kind}-ubyte.gz")
        for part in ("train", "test")
        for kind in ("images-idx3", "labels-idx1")
    ]
    return DatasetInfo(
        "emnist",
        "EMNIST",
        *specs,
        mirrors=_EMNIST_MIRRORS,
        num_classes=num_classes,
        mean=_MNIST_MEAN,
        std=_MNIST_STD,
        transpose=True,
        label_offset=offset,
        split=split,
        archive=_EMNIST_ZIP,
        archive_dir="gzip/",
    )


def get_info(dataset: str, emnist_split: str = "balanced") -> DatasetInfo:
    """The registry entry for a dataset name (and EMNIST split), case-insensitive."""
    key = _dataset_key(dataset)
    if key == "emnist":
        return _emnist(_split_key(emnist_split))
    return _idx_dataset(key)


__all__ = [
    "BUNDLED_MNIST_DIR",
    "DatasetInfo",
    "FileSpec",
    "base_num_classes",
    "dataset_names",
    "emnist_splits",
    "get_info",
]
