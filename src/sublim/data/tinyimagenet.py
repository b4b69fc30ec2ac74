"""TinyImageNet-200 (64x64 RGB) as uint8 tensors; its labelled validation set is the test set.

The dataset folder `tiny-imagenet-200/` (with `wnids.txt`, `train/<wnid>/images/*.JPEG`,
`val/images/*.JPEG` and `val/val_annotations.txt`) is looked up in `<data-dir>/`, or `<data-dir>`
is that folder itself. When absent, it is extracted from `tiny-imagenet-200.zip` (downloaded and
verified when allowed): every member name is checked before anything is written, each file is
written atomically, and the two index files come last, so their presence marks a complete
extraction. Class indices follow the line order of `wnids.txt`; the class count is read from it.
Unreadable images are skipped with one warning, never replaced.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from sublim.data.cifar import _FIX
from sublim.data.download import Failure, obtain_file, why_missing
from sublim.data.folders import _SHOWN, _decode, _default_warn, _reason
from sublim.errors import DataError

TINYIMAGENET_URLS = ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",)
TINYIMAGENET_ARCHIVE = "tiny-imagenet-200.zip"
TINYIMAGENET_MD5 = "md5:90528d7ca1a48142e341f4ef8d21d0de"
TINYIMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINYIMAGENET_STD = (0.2302, 0.2265, 0.2262)
TINYIMAGENET_CLASSES = 200
TINYIMAGENET_DIR = "tiny-imagenet-200"
TINYIMAGENET_SIZE = 64
_WNIDS, _ANNOTATIONS = "wnids.txt", "val/val_annotations.txt"
_INDEX = (_WNIDS, _ANNOTATIONS)  # extracted last: together they mark a complete folder
_EXTRA = ("words.txt",)  # extracted too (class names); test/ is skipped: it has no labels
_SUFFIXES = (".jpeg", ".jpg")
_FIX_DIR = "delete the folder so it is extracted again, or replace it with a good copy"


def _listing(items: Sequence[str]) -> str:
    """The first few items, comma-separated, and how many more there are."""
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _plain(name: str) -> bool:
    """A single path component that stays inside its folder."""
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _safe_member(name: str) -> bool:
    """A zip member name that extracts inside the destination (no absolute or '..' path)."""
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and "\\" not in name


def _wanted(name: str) -> bool:
    """Whether a zip member (a file) is extracted: index files, train/ and val/."""
    prefix = TINYIMAGENET_DIR + "/"
    if not name.startswith(prefix):
        return False
    rel = name[len(prefix) :]
    return rel in _INDEX or rel in _EXTRA or rel.startswith(("train/", "val/"))


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _INDEX)


def _extract(archive: Path, data_dir: Path) -> None:
    """Extract train/, val/ and the index files into data_dir/tiny-imagenet-200/, safely.

    Refuses the whole archive if any member name is unsafe; each file goes to a temp file renamed
    into place; the index files are written last, so an interrupted extraction is redone.
    """
    prefix = TINYIMAGENET_DIR + "/"
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            unsafe = [m.filename for m in members if not _safe_member(m.filename)]
            if unsafe:
                raise DataError(
                    f"--data-dir: {archive} holds an unsafe member {unsafe[0]!r} "
                    f"(absolute or '..' path); refusing to extract it; {_FIX}"
                )
            wanted = [m for m in members if not m.is_dir() and _wanted(m.filename)]
            names = {m.filename for m in wanted}
            absent = [prefix + name for name in _INDEX if prefix + name not in names]
            if absent:
                raise DataError(
                    f"--data-dir: {archive} has no {', '.join(absent)}; it is not the "
                    f"TinyImageNet-200 archive; {_FIX}"
                )
            wanted.sort(key=lambda m: m.filename[len(prefix) :] in _INDEX)  # stable: index last
            made: set[Path] = set()
            for member in wanted:
                dest = data_dir / member.filename
                if dest.parent not in made:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    made.add(dest.parent)
                fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
                try:
                    with os.fdopen(fd, "wb") as out, zf.open(member) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                    os.replace(tmp, dest)
                finally:
                    Path(tmp).unlink(missing_ok=True)
    # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method
    except (
        zipfile.BadZipFile,
        OSError,
        EOFError,
        zlib.error,
        RuntimeError,
        NotImplementedError,
    ) as e:
        raise DataError(
            f"--data-dir: cannot extract TinyImageNet from {archive} "
            f"({' '.join(str(e).split()) or type(e).__name__}); {_FIX}"
        ) from e


def _lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file; DataError if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"--data-dir: cannot read {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"--data-dir: {path} is not UTF-8 text ({e.reason}); {_FIX_DIR}") from e


def _read_wnids(root: Path) -> list[str]:
    """Class ids in wnids.txt order (the class index is the line order)."""
    path = root / _WNIDS
    wnids = [line.strip() for line in _lines(path) if line.strip()]
    bad = [w for w in wnids if not _plain(w)]
    if bad or len(set(wnids)) != len(wnids) or len(wnids) < 2:
        why = f"invalid id {bad[0]!r}" if bad else f"{len(wnids)} ids, {len(set(wnids))} distinct"
        raise DataError(
            f"--data-dir: {path} must list at least 2 distinct class ids, one a line ({why}); "
            f"{_FIX_DIR}"
        )
    return wnids


def _train_files(root: Path, wnids: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Every train image path (sorted by name within each class) and its class index."""
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        try:
            images = sorted(
                p
                for p in folder.iterdir()
                if p.suffix.lower() in _SUFFIXES and not p.name.startswith(".") and p.is_file()
            )
        except OSError as e:
            raise DataError(
                f"--data-dir: {root}: class {wnid} of {_WNIDS} has no readable folder "
                f"train/{wnid}/images ({e.strerror or e}); {_FIX_DIR}"
            ) from e
        if not images:
            raise DataError(
                f"--data-dir: {root}: class {wnid} has no JPEG image in train/{wnid}/images; "
                f"{_FIX_DIR}"
            )
        files += images
        labels += [label] * len(images)
    return files, labels


def _val_files(root: Path, wnids: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Every annotated validation image and its class index, checked against wnids and files."""
    path = root / _ANNOTATIONS
    index = {wnid: i for i, wnid in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    seen: set[str] = set()
    unknown: list[str] = []
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) < 2 or not _plain(fields[0]) or fields[0] in seen:
            what = "repeats a file" if fields[0] in seen else "is not 'file<TAB>wnid<TAB>...'"
            raise DataError(f"--data-dir: {path} line {number} {what}: {line!r}; {_FIX_DIR}")
        name, wnid = fields[0], fields[1]
        seen.add(name)
        if wnid not in index:
            unknown.append(f"{wnid} (line {number})")
            continue
        files.append(root / "val" / "images" / name)
        labels.append(index[wnid])
    if unknown:
        raise DataError(
            f"--data-dir: {path} names {len(unknown)} class ids missing from {_WNIDS}: "
            f"{_listing(unknown)}; {_FIX_DIR}"
        )
    absent = [p.name for p in files if not p.is_file()]
    if absent:
        raise DataError(
            f"--data-dir: {path} annotates {len(absent)} images missing from {root}/val/images: "
            f"{_listing(absent)}; {_FIX_DIR}"
        )
    if not files:
        raise DataError(f"--data-dir: {path} annotates no image; {_FIX_DIR}")
    return files, labels


def _decode_all(
    files: Sequence[Path], labels: Sequence[int], root: Path, bad: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [n, 3, 64, 64], int64 [n]) of the readable images; unreadable ones go to `bad`.

    Each image is decoded with Pillow (RGB, 64x64) straight into one preallocated array.
    """
    size = TINYIMAGENET_SIZE
    x = np.empty((len(files), 3, size, size), np.uint8)
    kept: list[int] = []
    for path, label in zip(files, labels, strict=True):
        try:
            pixels = _decode(path, size)
        except Exception as e:  # Pillow raises many kinds; report, never substitute
            bad.append(f"{path.relative_to(root).as_posix()} ({_reason(e, path)})")
            continue
        x[len(kept)] = pixels.transpose(2, 0, 1)
        kept.append(label)
    return x[: len(kept)], np.asarray(kept, dtype=np.int64)


def load_tinyimagenet(
    data_dir: Path,
    download: bool = True,
    progress: bool = False,
    urls: Sequence[str] = TINYIMAGENET_URLS,
    checksum: str | Sequence[str] | None = TINYIMAGENET_MD5,
    warn: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x uint8 [N,3,64,64], train_y int64, test_x (the validation set), test_y).

    `urls` and `checksum` describe where the archive comes from (tests point them at a local one);
    unreadable images are reported through `warn` (default: a line on stderr) and skipped.
    """
    data_dir = Path(data_dir).expanduser()
    dirs = [data_dir / TINYIMAGENET_DIR, data_dir]
    root = next((d for d in dirs if _complete(d)), None)
    if root is None:
        archive = data_dir / TINYIMAGENET_ARCHIVE

        def missing(failures: Sequence[Failure] | None) -> DataError:
            return DataError(
                f"TinyImageNet: cannot find {_WNIDS} and {_ANNOTATIONS} in "
                f"{', '.join(str(d) for d in dirs)} nor {TINYIMAGENET_ARCHIVE} in {data_dir}; "
                f"{why_missing(failures)}; fetch {TINYIMAGENET_ARCHIVE} from {' or '.join(urls)} "
                f"into --data-dir {data_dir}"
            )

        obtain_file(archive, urls, checksum, download, progress, missing)
        _extract(archive, data_dir)
        root = dirs[0]
    wnids = _read_wnids(root)
    train_files, train_labels = _train_files(root, wnids)
    val_files, val_labels = _val_files(root, wnids)
    bad: list[str] = []
    train_x, train_y = _decode_all(train_files, train_labels, root, bad)
    test_x, test_y = _decode_all(val_files, val_labels, root, bad)
    if bad:
        total = len(train_files) + len(val_files)
        (warn or _default_warn)(
            f"skipped {len(bad)} unreadable images of {total} under {root}: {_listing(bad)}"
        )
    counts = np.bincount(train_y, minlength=len(wnids))
    empty = [wnid for wnid, count in zip(wnids, counts, strict=True) if not count]
    if empty:
        raise DataError(
            f"--data-dir: {root}: {len(empty)} classes have no readable train image: "
            f"{_listing(empty)}; {_FIX_DIR}"
        )
    if not len(test_y):
        raise DataError(f"--data-dir: {root}: no validation image is readable; {_FIX_DIR}")
    return (
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
    )
