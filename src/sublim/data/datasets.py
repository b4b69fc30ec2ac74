"""Load a registered dataset into memory as uint8 tensors, and select / remap classes.

Files are looked up in --data-dir, then torchvision's `<data-dir>/<Folder>/raw/`, then the copy
bundled with sublim (MNIST); missing files are downloaded into --data-dir. Every gzip file with a
published digest is verified, so a damaged file is reported instead of silently training on it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sublim.data.download import DownloadError, Failure, checksum_mismatch, download_file
from sublim.data.idx import read_idx
from sublim.data.registry import DatasetInfo, FileSpec, get_info
from sublim.errors import DataError


@dataclass(frozen=True, eq=False)
class ImageData:
    """A dataset in memory: uint8 images [N, C, H, W], int64 labels [N] in 0..num_classes-1."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    base_num_classes: int
    classes: tuple[int, ...]  # original label of each current label, in order
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    split: str | None = None  # EMNIST split


def _search_dirs(info: DatasetInfo, data_dir: Path) -> list[Path]:
    dirs = [data_dir, data_dir / info.folder / "raw"]
    if info.bundled is not None:
        dirs.append(Path(info.bundled))
    return list(dict.fromkeys(dirs))


def _find(spec: FileSpec, dirs: Sequence[Path]) -> Path | None:
    """The first existing copy of a file, gzip or plain name, in search order."""
    for d in dirs:
        for name in dict.fromkeys((spec.name, spec.plain_name)):
            if (d / name).is_file():
                return d / name
    return None


def _verify(info: DatasetInfo, spec: FileSpec, path: Path) -> None:
    """Check a found file against its published digests (only the named, usually gzip, file)."""
    if path.name != spec.name or not spec.checksums:
        return
    try:
        mismatch = checksum_mismatch(path, spec.checksums)
    except OSError as e:
        raise DataError(f"--data-dir: cannot read {path}: {e.strerror or e}") from e
    if mismatch is None:
        return
    expected, actual = mismatch
    if info.bundled is not None and path.parent == Path(info.bundled):
        fix = "the copy bundled with sublim is damaged: reinstall sublim, or put a good copy in"
        fix += " --data-dir"
    else:
        fix = "delete it so it is downloaded again, or replace it with a good copy"
    raise DataError(
        f"--data-dir: {path} fails its checksum for {info.label} "
        f"(expected {expected}, got {actual}); {fix}"
    )


def _urls(mirrors: Sequence[str], name: str) -> list[str]:
    return [m.rstrip("/") + "/" + name for m in mirrors]


def _missing_error(
    info: DatasetInfo,
    missing: Sequence[FileSpec],
    dirs: Sequence[Path],
    data_dir: Path,
    failures: Sequence[Failure] | None,
) -> DataError:
    names = ", ".join(s.name for s in missing)
    where = ", ".join(str(d) for d in dirs)
    if failures is None:
        why = "downloading is disabled"
    else:
        why = "download failed (" + "; ".join(f"{f.url}: {f.reason}" for f in failures) + ")"
    if info.archive is not None:
        what, sources = info.archive.name, _urls(info.mirrors, info.archive.name)
    else:
        what, sources = ("it" if len(missing) == 1 else "them"), info.mirrors
    return DataError(
        f"{info.label}: cannot find {names} (plain or .gz) in {where}; {why}; "
        f"fetch {what} from {' or '.join(sources)} into --data-dir {data_dir}"
    )


def _extract(info: DatasetInfo, archive: Path, specs: Sequence[FileSpec], dest_dir: Path) -> None:
    """Extract the split's members from the archive into dest_dir, each file atomically."""
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(archive) as zf:
            by_base = {Path(n).name: n for n in zf.namelist()}
            for spec in specs:
                member = info.archive_dir + spec.name
                member = member if member in by_base.values() else by_base.get(spec.name)
                if member is None:
                    raise DataError(
                        f"{info.label}: {archive} has no member {info.archive_dir + spec.name}; "
                        f"delete it so it is downloaded again, or put the file in --data-dir"
                    )
                fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{spec.name}.", suffix=".part")
                try:
                    with os.fdopen(fd, "wb") as out, zf.open(member) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                    os.replace(tmp, dest_dir / spec.name)
                finally:
                    Path(tmp).unlink(missing_ok=True)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{info.label}: cannot extract from {archive} ({' '.join(str(e).split())}); "
            f"delete it so it is downloaded again, or check --data-dir {dest_dir}"
        ) from e


def _fetch_missing(
    info: DatasetInfo,
    missing: list[FileSpec],
    dirs: list[Path],
    data_dir: Path,
    download: bool,
    progress: bool,
) -> None:
    """Download (or extract from the archive) the missing files into data_dir."""
    if info.archive is None:
        if not download:
            raise _missing_error(info, missing, dirs, data_dir, None)
        for spec in missing:
            urls = _urls(info.mirrors, spec.name)
            try:
                download_file(urls, data_dir / spec.name, spec.checksums or None, progress)
            except DownloadError as e:
                still = [s for s in missing if not (data_dir / s.name).is_file()]
                raise _missing_error(info, still, dirs, data_dir, e.failures) from e
        return
    archive = _find(info.archive, dirs)
    if archive is not None:
        _verify(info, info.archive, archive)
    elif not download:
        raise _missing_error(info, missing, dirs, data_dir, None)
    else:
        urls = _urls(info.mirrors, info.archive.name)
        dest = data_dir / info.archive.name
        try:
            archive = download_file(urls, dest, info.archive.checksums or None, progress)
        except DownloadError as e:
            raise _missing_error(info, missing, dirs, data_dir, e.failures) from e
    _extract(info, archive, missing, data_dir)


def _locate(info: DatasetInfo, data_dir: Path, download: bool, progress: bool) -> list[Path]:
    """Paths of the four files, verified, fetching the missing ones when allowed."""
    dirs = _search_dirs(info, data_dir)
    found = [_find(spec, dirs) for spec in info.files]
    for spec, path in zip(info.files, found, strict=True):
        if path is not None:
            _verify(info, spec, path)
    missing = [spec for spec, path in zip(info.files, found, strict=True) if path is None]
    if missing:
        _fetch_missing(info, missing, dirs, data_dir, download, progress)
    paths = [path or _find(spec, [data_dir]) for spec, path in zip(info.files, found, strict=True)]
    if any(p is None for p in paths):  # cannot happen unless the files vanish meanwhile
        raise _missing_error(info, missing, dirs, data_dir, None)
    return paths  # type: ignore[return-value]


def _load_part(info: DatasetInfo, images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one split (train or test) and check it: shapes, counts and label range."""
    x, y = read_idx(images), read_idx(labels)
    if x.dim() != 3 or x.dtype != torch.uint8:
        raise DataError(
            f"--data-dir: {images} holds {x.dtype} of shape {tuple(x.shape)}; "
            f"{info.label} needs uint8 images [N, H, W]"
        )
    if y.dim() != 1 or y.is_floating_point():
        raise DataError(
            f"--data-dir: {labels} holds {y.dtype} of shape {tuple(y.shape)}; "
            f"{info.label} needs integer labels [N]"
        )
    if len(x) != len(y):
        raise DataError(
            f"--data-dir: {images} has {len(x)} images but {labels} has {len(y)} labels; "
            f"replace them with a matching pair for {info.label}"
        )
    y = y.long() - info.label_offset
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
        lo, hi = info.label_offset, info.num_classes - 1 + info.label_offset
        raise DataError(
            f"--data-dir: {labels} has labels {int(y.min()) + lo}..{int(y.max()) + lo}, "
            f"outside {lo}..{hi} for {info.label}; replace it with the right file"
        )
    if info.transpose:
        x = x.transpose(1, 2)
    return x.unsqueeze(1).contiguous(), y


def load_dataset(
    dataset: str | DatasetInfo,
    data_dir: str | Path,
    emnist_split: str = "balanced",
    download: bool = True,
    progress: bool = True,
    image_size: int = 64,
    test_fraction: float = 0.2,
) -> ImageData:
    """Load train and test splits of a dataset (name, or a DatasetInfo) as uint8 tensors.

    `cifar10` reads the python-pickle batches (downloading the archive when missing);
    `image-folder` reads `data_dir/<class>/*.jpg|png` resized to `image_size` RGB, with a
    deterministic `test_fraction` split.

    Files are searched in data_dir, data_dir/<Folder>/raw/ and the bundled copy; missing ones
    are downloaded into data_dir when `download`, else a DataError says where to get them.
    """
    if isinstance(dataset, str) and dataset.strip().lower() in ("cifar10", "image-folder"):
        return _load_rgb(
            dataset.strip().lower(),
            Path(data_dir).expanduser(),
            download,
            progress,
            image_size,
            test_fraction,
        )
    info = dataset if isinstance(dataset, DatasetInfo) else get_info(dataset, emnist_split)
    data_dir = Path(data_dir).expanduser()
    train_images, train_labels, test_images, test_labels = _locate(
        info, data_dir, download, progress
    )
    train_x, train_y = _load_part(info, train_images, train_labels)
    test_x, test_y = _load_part(info, test_images, test_labels)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"--data-dir: {train_images} has images of size {tuple(train_x.shape[2:])} but "
            f"{test_images} has {tuple(test_x.shape[2:])}; replace them with matching files"
        )
    return ImageData(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=info.num_classes,
        base_num_classes=info.num_classes,
        classes=tuple(range(info.num_classes)),
        mean=info.mean,
        std=info.std,
        name=info.name,
        split=info.split,
    )


def _load_rgb(
    name: str, root: Path, download: bool, progress: bool, size: int, test_fraction: float
) -> ImageData:
    """CIFAR-10 or an image folder as ImageData (RGB uint8, per-dataset normalisation)."""
    if name == "cifar10":
        from .cifar import CIFAR10_MEAN, CIFAR10_STD, load_cifar10

        train_x, train_y, test_x, test_y = load_cifar10(root, download, progress)
        mean, std, n = CIFAR10_MEAN, CIFAR10_STD, 10
    else:
        from .folders import IMAGENET_MEAN, IMAGENET_STD, load_image_folder

        train_x, train_y, test_x, test_y, names = load_image_folder(root, size, test_fraction)
        mean, std, n = IMAGENET_MEAN, IMAGENET_STD, len(names)
    return ImageData(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=n,
        base_num_classes=n,
        classes=tuple(range(n)),
        mean=tuple(mean),
        std=tuple(std),
        name=name,
    )


def select_classes(data: ImageData, classes: Sequence[int]) -> ImageData:
    """Keep only the given original labels, in train and test, remapped to 0..K-1 in that order."""
    wanted = [int(c) for c in classes]
    if not wanted:
        raise DataError("--classes: no classes given; name at least one label")
    if len(set(wanted)) != len(wanted):
        raise DataError(f"--classes: {wanted} repeats a label; give each label once")
    unknown = [c for c in wanted if c not in data.classes]
    if unknown:
        lo, hi = min(data.classes), max(data.classes)
        allowed = f"{lo}..{hi}" if data.classes == tuple(range(lo, hi + 1)) else list(data.classes)
        raise DataError(
            f"--classes: label(s) {unknown} not available in {data.name}; choose among {allowed}"
        )
    position = {orig: i for i, orig in enumerate(data.classes)}
    lut = torch.full((data.num_classes,), -1, dtype=torch.long)
    lut[torch.tensor([position[c] for c in wanted])] = torch.arange(len(wanted))

    def pick(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mapped = lut[y]
        keep = mapped >= 0
        return x[keep], mapped[keep]

    train_x, train_y = pick(data.train_x, data.train_y)
    test_x, test_y = pick(data.test_x, data.test_y)
    return ImageData(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=len(wanted),
        base_num_classes=data.base_num_classes,
        classes=tuple(wanted),
        mean=data.mean,
        std=data.std,
        name=data.name,
        split=data.split,
    )


def first_classes(data: ImageData, k: int) -> ImageData:
    """Keep original labels 0..k-1 (the reference's --class-count K)."""
    if not 1 <= int(k) <= data.num_classes:
        raise DataError(f"--class-count: {k} is out of range; choose 1..{data.num_classes}")
    return select_classes(data, range(int(k)))
