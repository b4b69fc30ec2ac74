"""Image folders (`root/<class>/**/*.jpg|png|...`) as uint8 tensors, with a stable train/test split.

Each image goes to the test split by a hash of its path relative to root, so the split does not
depend on the seed, the machine or the listing order, and adding images never moves others.
Unreadable images are skipped with one warning, never silently replaced.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sublim.config import IMAGE_SUFFIXES
from sublim.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # case-insensitive; the config fingerprints the same files
_SHOWN = 5  # unreadable images named in the warning


def _default_warn(message: str) -> None:
    print(f"sublim: warning: {message}", file=sys.stderr)


def folder_classes(root: Path) -> list[str]:
    """Sorted names of the class sub-directories of root (hidden dirs ignored).

    DataError when root is not a directory or has fewer than 2 class directories.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory; give a folder of class folders")
    try:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise DataError(f"image folder {root}: cannot list it: {e.strerror or e}") from e
    if len(names) < 2:
        raise DataError(
            f"image folder {root} has {len(names)} class folder(s) ({', '.join(names) or 'none'}); "
            f"put each class's images in its own sub-folder, at least 2 classes"
        )
    return names


def split_key(relative: str) -> float:
    """Position in [0, 1) of an image (posix path relative to root); test when < test_fraction."""
    digest = hashlib.blake2b(relative.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def _images(class_dir: Path) -> list[Path]:
    """Image files under class_dir (recursive, hidden names skipped), sorted by path."""
    return sorted(
        p
        for p in class_dir.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)
        and p.is_file()
    )


def _decode(path: Path, size: int) -> np.ndarray:
    """uint8 [size, size, 3] RGB pixels of one image file."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _reason(error: Exception, path: Path) -> str:
    text = " ".join(str(error).replace(f" {str(path)!r}", "").replace(str(path), "").split())
    return text or type(error).__name__


def _to_chw(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def load_image_folder(
    root: Path,
    size: int,
    test_fraction: float = 0.2,
    warn: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """(train_x uint8 [N,3,size,size], train_y int64, test_x, test_y, class_names).

    Images are resized to size x size RGB; unreadable ones are skipped and reported via `warn`.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise DataError(f"--image-size: {size!r} is too small; choose an integer of 8 or more")
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise DataError(f"--test-fraction: {test_fraction!r} is out of range; choose 0 < f < 1")
    root = Path(root).expanduser()
    classes = folder_classes(root)
    parts: dict[bool, tuple[list[np.ndarray], list[int]]] = {False: ([], []), True: ([], [])}
    bad: list[str] = []
    total = 0
    for label, name in enumerate(classes):
        try:
            files = _images(root / name)
        except OSError as e:
            raise DataError(f"image folder {root}: cannot list {name}: {e.strerror or e}") from e
        total += len(files)
        readable = 0
        for path in files:
            relative = path.relative_to(root).as_posix()
            try:
                pixels = _decode(path, size)
            except Exception as e:  # Pillow raises many kinds; report, never substitute
                bad.append(f"{relative} ({_reason(e, path)})")
                continue
            readable += 1
            images, labels = parts[split_key(relative) < test_fraction]
            images.append(pixels)
            labels.append(label)
        if readable == 0:
            why = f"its {len(files)} image file(s) are unreadable" if files else "it holds none"
            raise DataError(
                f"image folder {root}: class {name!r} has no readable image ({why}; "
                f"extensions {', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
            )
    if bad:
        shown = ", ".join(bad[:_SHOWN])
        more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        (warn or _default_warn)(
            f"skipped {len(bad)} unreadable images of {total} under {root}: {shown}{more}"
        )
    count = total - len(bad)
    for is_test, split, hint in ((False, "train", "smaller"), (True, "test", "larger")):
        if not parts[is_test][0]:
            raise DataError(
                f"image folder {root}: the {split} split is empty with --test-fraction "
                f"{test_fraction} ({count} readable images); choose a {hint} --test-fraction"
            )
    (train_images, train_labels), (test_images, test_labels) = parts[False], parts[True]
    train_x, test_x = _to_chw(train_images), _to_chw(test_images)
    train_y = torch.tensor(train_labels, dtype=torch.int64)
    test_y = torch.tensor(test_labels, dtype=torch.int64)
    return train_x, train_y, test_x, test_y, classes
