"""CIFAR-10 from the standard python-pickle batches, as uint8 tensors.

Batches are looked up in `<data-dir>/cifar-10-batches-py/`, then `<data-dir>/`; when absent they
are extracted from `cifar-10-python.tar.gz` (downloaded and verified when allowed). Batches are
read with an unpickler that only builds numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import os
import pickle
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from sublim.data.download import REPLACE_FIX, Failure, obtain_file, why_missing
from sublim.errors import DataError

CIFAR10_URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "md5:c58f30108f718f92721af3b95e74349a"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
_NAMES = (*TRAIN_BATCHES, TEST_BATCH)
_FIX = REPLACE_FIX


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as Python 3 protocol-2 pickles use it for bytes; latin-1 only."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1", errors)


_RECONSTRUCT = np.array(0).__reduce__()[0]  # numpy's _reconstruct, whatever its module
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which a CIFAR batch never needs"
            ) from None


def read_pickled_images(
    path: Path, what: str = "CIFAR-10 batch", key: bytes = b"labels", classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-style pickle as (uint8 [n, 3072] C-contiguous, writable; int64 labels [n]),
    checked; `key` names the label list (b"fine_labels" for CIFAR-100)."""
    label = key.decode().replace("_", " ")
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"--data-dir: cannot read {path}: {e.strerror or e}") from e
    except Exception as e:  # a damaged pickle raises nearly anything
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(
            f"--data-dir: {path} is not a {what} ({reason}); refusing to load it; {_FIX}"
        ) from e
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(key) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        what_ = (
            f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        )
        raise DataError(f"--data-dir: {path} has data {what_}, not uint8 [N, 3072] images; {_FIX}")
    if data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"--data-dir: {path} has images of {data.shape[1]} bytes, not 3072 (3x32x32); {_FIX}"
        )
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError):  # ragged lists
        y = np.empty((0, 0))
    if y.ndim != 1 or len(y) != len(data) or (len(y) and y.dtype.kind not in "iu"):
        raise DataError(
            f"--data-dir: {path} has {len(data)} images but its {key.decode()} are not a list "
            f"of {len(data)} integers; {_FIX}"
        )
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise DataError(
            f"--data-dir: {path} has {label} {y.min()}..{y.max()}, outside 0..{classes - 1}; {_FIX}"
        )
    return np.require(data, requirements="CW"), y.astype(np.int64)


def _find(dirs: Sequence[Path], name: str) -> Path | None:
    return next((d / name for d in dirs if (d / name).is_file()), None)


def _safe(member: tarfile.TarInfo) -> bool:
    path = PurePosixPath(member.name)
    return not path.is_absolute() and ".." not in path.parts and "\\" not in member.name


def extract_members(
    archive: Path, names: Sequence[str], dest_dir: Path, label: str = "CIFAR-10"
) -> None:
    """Extract the named files (by base name) of a .tar.gz into dest_dir; refuses unsafe archives.

    Members go to temp files and are renamed into place only once the whole archive has been
    read without a problem, so a bad archive leaves nothing behind.
    """
    tmps: dict[str, Path] = {}
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:gz") as tf:
            for member in tf:
                if not _safe(member):
                    raise DataError(
                        f"--data-dir: {archive} holds an unsafe member {member.name!r} "
                        f"(absolute or '..' path); refusing to extract it; {_FIX}"
                    )
                name = PurePosixPath(member.name).name
                if name not in names or name in tmps or not member.isfile():
                    continue
                src = tf.extractfile(member)
                fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{name}.", suffix=".part")
                tmps[name] = Path(tmp)
                with os.fdopen(fd, "wb") as out, src:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
        absent = [n for n in names if n not in tmps]
        if absent:
            raise DataError(
                f"--data-dir: {archive} has no {', '.join(absent)}; it is not the {label} "
                f"python archive; {_FIX}"
            )
        for name, tmp in tmps.items():
            os.replace(tmp, dest_dir / name)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"--data-dir: cannot extract {label} from {archive} ({' '.join(str(e).split())}); "
            f"{_FIX}"
        ) from e
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def _missing_error(
    missing: Sequence[str],
    dirs: Sequence[Path],
    data_dir: Path,
    urls: Sequence[str],
    failures: Sequence[Failure] | None,
) -> DataError:
    return DataError(
        f"CIFAR-10: cannot find {', '.join(missing)} in {', '.join(str(d) for d in dirs)} "
        f"nor {CIFAR10_ARCHIVE} in {data_dir}; {why_missing(failures)}; fetch {CIFAR10_ARCHIVE} "
        f"from {' or '.join(urls)} into --data-dir {data_dir}"
    )


def _locate(
    data_dir: Path,
    download: bool,
    progress: bool,
    urls: Sequence[str],
    checksum: str | None,
) -> list[Path]:
    """Paths of the six batches, extracting (and downloading) the archive when some are missing."""
    dirs = [data_dir / CIFAR10_DIR, data_dir]
    found = {name: _find(dirs, name) for name in _NAMES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        archive = data_dir / CIFAR10_ARCHIVE
        obtain_file(
            archive,
            urls,
            checksum,
            download,
            progress,
            lambda failures: _missing_error(missing, dirs, data_dir, urls, failures),
        )
        extract_members(archive, missing, dirs[0])
        found.update({name: dirs[0] / name for name in missing})
    return [found[name] for name in _NAMES]  # type: ignore[misc]


def load_cifar10(
    data_dir: Path,
    download: bool = True,
    progress: bool = False,
    urls: Sequence[str] = CIFAR10_URLS,
    checksum: str | None = CIFAR10_MD5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x uint8 [50000,3,32,32], train_y int64 [50000], test_x [10000,3,32,32], test_y int64).

    `urls` and `checksum` describe where the archive comes from (tests point them at a local one).
    """
    paths = _locate(Path(data_dir).expanduser(), download, progress, urls, checksum)
    batches = [read_pickled_images(p) for p in paths]
    train = batches[: len(TRAIN_BATCHES)]
    train_x = np.concatenate([x for x, _ in train])  # a fresh, writable array
    train_y = np.concatenate([y for _, y in train])
    test_x, test_y = batches[-1][0].copy(), batches[-1][1]
    return (
        torch.from_numpy(train_x).reshape(-1, 3, 32, 32),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x).reshape(-1, 3, 32, 32),
        torch.from_numpy(test_y),
    )
