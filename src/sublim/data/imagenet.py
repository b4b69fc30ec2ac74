"""ImageNet (ILSVRC2012) read from its folder, image by image: the index of files, the labels and
the per-image decode + augmentation that DataLoader workers run (`imagenet_loader` batches it).

Layout (`root`): `train/<wnid>/*.JPEG`; `val/` either as class folders (`val/<wnid>/*.JPEG`,
what the common valprep.sh makes) or flat (`val/ILSVRC2012_val_00000001.JPEG`, ...) with one of
these label files, looked for in `root`, `root/val` and the three folders above `root`:

- `val_labels.txt`: lines "<file> <wnid>" (the file with or without its extension);
- `LOC_val_solution.csv` (the Kaggle layout, root = .../ILSVRC/Data/CLS-LOC): "ImageId,
  PredictionString", the wnid being the first word of PredictionString;
- the devkit's `ILSVRC2012_validation_ground_truth.txt` (line i: the 1-based ILSVRC2012_ID of
  ILSVRC2012_val_<i>, also found in ILSVRC2012_devkit_t12/data/) with `map_clsloc.txt` (the
  ILSVRC2015 devkit's "<wnid> <ILSVRC2012_ID> <name>" lines) beside it or in those folders. The
  2012 devkit's meta.mat needs scipy, which sublim does not use: give one of the text files.

Classes are the sorted wnids of `train/` (index 0 = n01440764 on ImageNet-1k), or `classes`.
The index holds file names only (a numpy byte array, cheap to share with forked workers); the
images stay on disk. Image suffixes: .JPEG / .jpg / .jpeg / .png, any case.

Transforms (torchvision's defaults, our own code): train = RandomResizedCrop(224, scale (0.08, 1),
ratio (3/4, 4/3); 10 tries, then the central crop of the clamped ratio) + horizontal flip (p 1/2),
every draw from a torch.Generator seeded by (seed, epoch, index), so an epoch's augmentation is
the same however it is split across workers or resumed; eval = resize the shorter side to 256
(bilinear, Pillow's antialiasing), centre crop 224. Images come out as uint8 CHW tensors: the
ImageNet mean/std normalisation runs on the device (`normalize_batch`), 4x less to move than
float32; `normalize=True` does it in the worker instead.

A file Pillow cannot decode yields an `Unreadable(index, reason)` sample: the loader drops it,
warns once per file and counts it. Layout errors are one-line DataErrors naming the folder or
file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from sublim.data.folders import IMAGENET_MEAN, IMAGENET_STD, _reason
from sublim.errors import DataError
from sublim.seeds import derive

TRAIN_SIZE, EVAL_RESIZE, EVAL_SIZE = 224, 256, 224
SCALE, RATIO = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)
SUFFIXES = (".jpeg", ".jpg", ".png")
LABEL_FILES = ("val_labels.txt", "LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt")
_DEVKIT_DIRS = ("", "ILSVRC2012_devkit_t12/data")
_TRIES = 10


class Unreadable(NamedTuple):
    """What a dataset returns for a file Pillow cannot decode (the loader drops and counts it)."""

    index: int
    reason: str


# -- the index ----------------------------------------------------------------------------------


def _images(folder: Path) -> list[str]:
    """Sorted names of the image files directly in `folder`."""
    with os.scandir(folder) as entries:
        return sorted(
            e.name
            for e in entries
            if e.name.lower().endswith(SUFFIXES) and not e.name.startswith(".") and e.is_file()
        )


def _subdirs(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def imagenet_classes(root: str | Path) -> list[str]:
    """The sorted wnids (class folder names) of `root/train`; DataError when there are none."""
    train = Path(root).expanduser() / "train"
    if not train.is_dir():
        raise DataError(f"ImageNet folder {root}: no train/ folder (expected train/<wnid>/*.JPEG)")
    classes = _subdirs(train)
    if not classes:
        raise DataError(f"ImageNet folder {root}: train/ holds no class folders (<wnid>/*.JPEG)")
    return classes


def _class_folders(root: Path, split: str, classes: Sequence[str]) -> tuple[list[str], list[int]]:
    """(file paths relative to root/split, labels) of a class-folder split; every folder must be
    a known class and hold images."""
    folder, known = root / split, {c: i for i, c in enumerate(classes)}
    names, labels = [], []
    for wnid in _subdirs(folder):
        if wnid not in known:
            raise DataError(
                f"ImageNet folder {root}: {split}/{wnid} is not a class of train/ "
                f"({len(classes)} classes); remove it or add train/{wnid}"
            )
        files = _images(folder / wnid)
        if not files:
            raise DataError(
                f"ImageNet folder {root}: class folder {split}/{wnid} has no images "
                f"({'/'.join(SUFFIXES)}); add them or remove the folder"
            )
        names += [f"{wnid}/{f}" for f in files]
        labels += [known[wnid]] * len(files)
    if split == "train" and len(set(labels)) < len(classes):
        missing = sorted(set(classes) - {classes[i] for i in set(labels)})
        raise DataError(f"ImageNet folder {root}: class folder train/{missing[0]} is missing")
    return names, labels


def _find(root: Path, name: str, near: Path | None = None) -> Path | None:
    """`name` in `near`, root, root/val or one of the three folders above root (devkit data/
    sub-folders included), the first found."""
    places = [near] if near else []
    places += [root, root / "val", *list(root.resolve().parents)[:3]]
    for place in places:
        for sub in _DEVKIT_DIRS:
            path = place / sub / name
            if path.is_file():
                return path
    return None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"ImageNet labels {path}: unreadable ({e})") from e


def _bad_line(path: Path, number: int, line: str, expected: str) -> DataError:
    return DataError(f"ImageNet labels {path}: line {number} {line[:60]!r} is not {expected}")


def read_val_labels(path: Path, root: Path) -> dict[str, str]:
    """Image stem -> wnid from one of the accepted label files (by its name, see the module)."""
    lines, out = _read_lines(path), {}
    if path.suffix.lower() == ".csv":  # Kaggle: ImageId,PredictionString (wnid first)
        for n, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            image, _, prediction = line.partition(",")
            words = prediction.split()
            if not words or not image:
                raise _bad_line(path, n, line, "'<ImageId>,<wnid> <box> ...'")
            out[Path(image.strip()).stem] = words[0]
    elif "ground_truth" in path.name:  # devkit: 1-based ILSVRC2012_IDs in file order
        mapping = _find(root, "map_clsloc.txt", near=path.parent)
        if mapping is None:
            raise DataError(
                f"ImageNet labels {path}: map_clsloc.txt (<wnid> <ILSVRC2012_ID> <name> lines) "
                f"not found beside it or in {root}; the devkit's meta.mat needs scipy, so give "
                f"map_clsloc.txt or val_labels.txt (<file> <wnid>)"
            )
        wnid_of = {}
        for n, line in enumerate(_read_lines(mapping), start=1):
            words = line.split()
            if words and (len(words) < 2 or not words[1].isdigit()):
                raise _bad_line(mapping, n, line, "'<wnid> <ILSVRC2012_ID> <name>'")
            if words:
                wnid_of[int(words[1])] = words[0]
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if not line.strip().isdigit() or int(line) not in wnid_of:
                raise _bad_line(path, n, line, f"an ILSVRC2012_ID listed in {mapping.name}")
            out[f"ILSVRC2012_val_{n:08d}"] = wnid_of[int(line)]
    else:  # "<file> <wnid>"
        for n, line in enumerate(lines, start=1):
            words = line.split()
            if words and len(words) != 2:
                raise _bad_line(path, n, line, "'<file> <wnid>'")
            if words:
                out[Path(words[0]).stem] = words[1]
    return out


def _flat_val(
    root: Path, files: list[str], classes: Sequence[str], labels_file: Path | None
) -> tuple[list[str], list[int]]:
    """Labels of a flat val/ from its label file (given, or the first found)."""
    path = labels_file
    if path is None:
        path = next((p for p in (_find(root, name) for name in LABEL_FILES) if p), None)
    if path is None or not path.is_file():
        looked = f"{labels_file} does not exist" if labels_file else "no label file found"
        raise DataError(
            f"ImageNet folder {root}: val/ holds {len(files)} images but no class folders and "
            f"{looked}: give val_labels.txt ('<file> <wnid>' lines), LOC_val_solution.csv or "
            f"ILSVRC2012_validation_ground_truth.txt + map_clsloc.txt in {root}, or sort val/ "
            f"into val/<wnid>/ folders"
        )
    wnids, known = read_val_labels(path, root), {c: i for i, c in enumerate(classes)}
    labels = []
    for name in files:
        wnid = wnids.get(Path(name).stem)
        if wnid is None:
            raise DataError(f"ImageNet labels {path}: no label for val/{name}")
        if wnid not in known:
            raise DataError(
                f"ImageNet labels {path}: val/{name} is class {wnid}, which has no class "
                f"folder train/{wnid} in {root}"
            )
        labels.append(known[wnid])
    return files, labels


def index_split(
    root: str | Path,
    split: str,
    classes: Sequence[str],
    val_labels: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(file paths relative to root/split as a numpy byte array, int64 labels) of `split`."""
    root = Path(root).expanduser()
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"ImageNet folder {root}: no {split}/ folder")
    try:
        loose = _images(folder)
        if loose and _subdirs(folder):
            raise DataError(
                f"ImageNet folder {root}: {split}/ holds both class folders and {len(loose)} "
                f"loose images ({loose[0]}, ...); keep one layout"
            )
        if loose and split != "train":
            label_file = None if val_labels is None else Path(val_labels).expanduser()
            names, labels = _flat_val(root, loose, classes, label_file)
        else:
            names, labels = _class_folders(root, split, classes)
    except OSError as e:
        raise DataError(f"ImageNet folder {root}: cannot list {split}/: {e}") from e
    if not names:
        raise DataError(f"ImageNet folder {root}: {split}/ holds no images")
    encoded = np.array([os.fsencode(n) for n in names])
    return encoded, np.asarray(labels, dtype=np.int64)


# -- transforms ---------------------------------------------------------------------------------


def rrc_box(
    u: Sequence[float],
    width: int,
    height: int,
    scale: tuple[float, float] = SCALE,
    ratio: tuple[float, float] = RATIO,
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's (left, top, w, h) from 4 uniforms per try (`u`, 4 * 10 values):
    area fraction, log aspect, top, left; the central crop of the clamped aspect after 10."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for t in range(_TRIES):
        a, r, y, x = u[4 * t : 4 * t + 4]
        target = area * (scale[0] + a * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + r * (log_hi - log_lo))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(x * (width - w + 1)), int(y * (height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_image(image: Image.Image, size: int, g: torch.Generator) -> Image.Image:
    """RandomResizedCrop(size) + horizontal flip of an RGB image, drawn from `g`."""
    u = torch.rand(4 * _TRIES + 1, generator=g, dtype=torch.float64).tolist()
    left, top, w, h = rrc_box(u, *image.size)
    out = image.crop((left, top, left + w, top + h)).resize((size, size), Image.Resampling.BILINEAR)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if u[-1] < 0.5 else out


def eval_image(image: Image.Image, resize: int, size: int) -> Image.Image:
    """Resize the shorter side to `resize` (the longer one truncated as torchvision), centre crop
    `size` (offsets rounded as torchvision)."""
    width, height = image.size
    if width <= height:
        w, h = resize, int(resize * height / width)
    else:
        w, h = int(resize * width / height), resize
    image = image.resize((w, h), Image.Resampling.BILINEAR)
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255


def normalize_batch(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 [..., 3, H, W] (on any device) -> (x / 255 - mean) / std with ImageNet's mean/std."""
    mean, std = _MEAN.to(x.device, dtype), _STD.to(x.device, dtype)
    return (x.to(dtype) - mean) / std


# -- the dataset --------------------------------------------------------------------------------


class ImageNetFolder(Dataset):
    """One ImageNet split from disk: item (epoch, index) -> (image, label, index), decoded and
    augmented in the calling process (a DataLoader worker), or an `Unreadable`.

    `split` "train" augments (RandomResizedCrop(`size`) + flip, seeded by (seed, epoch, index));
    any other split ("val") is resized to `resize` and centre-cropped to `size`. An int item is
    (0, index). Images are uint8 CHW, or normalised float32 with `normalize`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        seed: int = 0,
        size: int | None = None,
        resize: int = EVAL_RESIZE,
        augment: bool | None = None,
        normalize: bool = False,
        classes: Sequence[str] | None = None,
        val_labels: str | Path | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split, self.seed, self.normalize = split, seed, normalize
        self.augment = split == "train" if augment is None else augment
        self.size = size or (TRAIN_SIZE if self.augment else EVAL_SIZE)
        self.resize = resize
        if not self.augment and resize < self.size:
            raise ValueError(f"resize {resize} is smaller than the crop {self.size}")
        self.classes = list(classes) if classes is not None else imagenet_classes(self.root)
        self.files, self.labels = index_split(self.root, split, self.classes, val_labels)
        # index -> reason, for files found unreadable (kept by the loader in the main process)
        self.unreadable: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def skipped_files(self) -> int:
        """Distinct files found unreadable so far (by loaders over this dataset)."""
        return len(self.unreadable)

    def path(self, index: int) -> Path:
        return self.root / self.split / os.fsdecode(self.files[index])

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, int, int] | Unreadable:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        index = int(index)
        path = self.path(index)
        try:
            with Image.open(path) as raw:
                image = raw.convert("RGB")
        except Exception as e:  # Pillow raises many kinds; the loader reports, never substitutes
            return Unreadable(index, _reason(e, path))
        if self.augment:
            g = torch.Generator().manual_seed(derive(self.seed, "imagenet-aug", epoch, index))
            image = train_image(image, self.size, g)
        else:
            image = eval_image(image, self.resize, self.size)
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        if self.normalize:
            x = normalize_batch(x)
        return x, int(self.labels[index]), index
