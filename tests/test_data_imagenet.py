"""ImageNet folder reader on a tiny generated tree of real JPEGs: classes, both val layouts and
the accepted label files, one-line layout errors, seeded per-epoch order and augmentation,
unreadable files skipped with one warning and counted, 2 workers == 0 workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sublim.data.imagenet import (
    EVAL_RESIZE,
    EVAL_SIZE,
    TRAIN_SIZE,
    ImageNetFolder,
    Unreadable,
    eval_image,
    imagenet_classes,
    normalize_batch,
    rrc_box,
    train_image,
)
from sublim.data.imagenet_loader import EpochSampler, imagenet_loader
from sublim.errors import DataError

WNIDS = ("n01440764", "n01443537", "n01484850")  # deliberately not created in sorted order
SIZE = 32  # crop size in these tests (the defaults are checked separately)


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)


def _tree(tmp: Path, val: str = "folders") -> Path:
    """root/train/<wnid>/ with 4 JPEGs each (one truncated, in the second class) and root/val
    with 2 images per class: class folders, or flat files named as ILSVRC2012's."""
    root = tmp / "imagenet"
    for c, wnid in enumerate(reversed(WNIDS)):
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(4):
            _jpeg(folder / f"{wnid}_{i}.JPEG", 10 * c + i)
    bad = root / "train" / WNIDS[1] / f"{WNIDS[1]}_2.JPEG"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated
    (root / "val").mkdir()
    for n in range(6):
        wnid = WNIDS[n % 3]
        name = f"ILSVRC2012_val_{n + 1:08d}.JPEG"
        if val == "folders":
            (root / "val" / wnid).mkdir(exist_ok=True)
            _jpeg(root / "val" / wnid / name, 100 + n)
        else:
            _jpeg(root / "val" / name, 100 + n)
    return root


# val image n (1-based) is class (n - 1) % 3
VAL_LABELS = [0, 1, 2, 0, 1, 2]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return _tree(tmp_path)


def test_classes_are_the_sorted_wnids_of_train(root: Path) -> None:
    assert imagenet_classes(root) == list(WNIDS)
    ds = ImageNetFolder(root, "train", size=SIZE)
    assert ds.classes == list(WNIDS) and len(ds) == 12
    assert ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.path(5) == root / "train" / WNIDS[1] / f"{WNIDS[1]}_1.JPEG"


def test_defaults_are_torchvisions_sizes(root: Path) -> None:
    assert (TRAIN_SIZE, EVAL_RESIZE, EVAL_SIZE) == (224, 256, 224)
    train, val = ImageNetFolder(root, "train"), ImageNetFolder(root, "val")
    assert (train.size, train.augment) == (224, True)
    assert (val.size, val.resize, val.augment) == (224, 256, False)
    x, label, index = train[(0, 0)]
    assert x.shape == (3, 224, 224) and x.dtype == torch.uint8 and (label, index) == (0, 0)
    assert val[0][0].shape == (3, 224, 224)


def test_val_class_folders(root: Path) -> None:
    ds = ImageNetFolder(root, "val", size=SIZE, resize=40)
    assert len(ds) == 6 and sorted(ds.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    for i in range(6):
        assert ds.path(i).parent.name == WNIDS[ds.labels[i]]


def _labels_by_name(ds: ImageNetFolder) -> list[int]:
    return [int(ds.labels[i]) for i in np.argsort([ds.path(i).name for i in range(len(ds))])]


@pytest.mark.parametrize("kind", ["val_labels", "kaggle", "devkit"])
def test_flat_val_with_each_accepted_label_file(tmp_path: Path, kind: str) -> None:
    root = _tree(tmp_path, val="flat")
    names = [f"ILSVRC2012_val_{n + 1:08d}" for n in range(6)]
    wnids = [WNIDS[c] for c in VAL_LABELS]
    if kind == "val_labels":
        lines = [f"{n}.JPEG {w}" for n, w in zip(names, wnids, strict=True)]
        (root / "val_labels.txt").write_text("\n".join(lines) + "\n")
    elif kind == "kaggle":  # beside ILSVRC/, three levels above root in the Kaggle layout
        rows = [f"{n},{w} 1 2 30 20 {w} 3 4 10 12" for n, w in zip(names, wnids, strict=True)]
        (root.parent / "LOC_val_solution.csv").write_text(
            "ImageId,PredictionString\n" + "\n".join(rows)
        )
    else:  # ILSVRC2012_IDs unrelated to the sorted order, mapped by map_clsloc.txt
        data = root / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        ids = {WNIDS[0]: 449, WNIDS[1]: 7, WNIDS[2]: 1}
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
            "".join(f"{ids[w]}\n" for w in wnids)
        )
        mapping = "".join(f"{w} {i} name_{i}\n" for w, i in ids.items())
        (data / "map_clsloc.txt").write_text("n09999999 2 other\n" + mapping)
    ds = ImageNetFolder(root, "val", size=SIZE, resize=40)
    assert _labels_by_name(ds) == VAL_LABELS


def test_flat_val_without_labels_names_the_files_looked_for(tmp_path: Path) -> None:
    root = _tree(tmp_path, val="flat")
    with pytest.raises(DataError, match="val_labels.txt.*LOC_val_solution.csv") as info:
        ImageNetFolder(root, "val")
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="nowhere.txt does not exist"):
        ImageNetFolder(root, "val", val_labels=tmp_path / "nowhere.txt")


def test_val_label_of_a_class_missing_from_train_is_one_line(tmp_path: Path) -> None:
    root = _tree(tmp_path, val="flat")
    lines = [f"ILSVRC2012_val_{n + 1:08d} {WNIDS[c]}" for n, c in enumerate(VAL_LABELS)]
    lines[3] = "ILSVRC2012_val_00000004 n09999999"
    (root / "val" / "val_labels.txt").write_text("\n".join(lines))
    with pytest.raises(
        DataError, match=r"ILSVRC2012_val_00000004.JPEG is class n09999999.*train/n09999999"
    ):
        ImageNetFolder(root, "val")


def test_val_class_folder_absent_from_train(root: Path) -> None:
    (root / "val" / "n09999999").mkdir()
    _jpeg(root / "val" / "n09999999" / "a.JPEG", 1)
    with pytest.raises(DataError, match="val/n09999999 is not a class of train/"):
        ImageNetFolder(root, "val")


def test_empty_train_class_folder(root: Path) -> None:
    (root / "train" / "n02000000").mkdir()
    with pytest.raises(DataError, match="class folder train/n02000000 has no images"):
        ImageNetFolder(root, "train")


def test_missing_train_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no train/ folder"):
        ImageNetFolder(tmp_path, "train")


def test_order_is_a_function_of_seed_and_epoch_and_resumes() -> None:
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    assert torch.equal(a.order(2), b.order(2))
    assert not torch.equal(a.order(2), a.order(3))
    assert not torch.equal(a.order(2), EpochSampler(50, seed=4).order(2))
    assert sorted(a.order(2).tolist()) == list(range(50))
    a.set_epoch(2)
    full = list(a)
    assert full == [(2, i) for i in a.order(2).tolist()]
    b.set_epoch(2, start=17)
    assert list(b) == full[17:] and len(b) == 33
    assert [i for _, i in EpochSampler(5, shuffle=False)] == list(range(5))


def test_augmentation_is_a_function_of_seed_epoch_and_index(root: Path) -> None:
    ds = ImageNetFolder(root, "train", seed=1, size=SIZE)
    x, label, index = ds[(4, 5)]
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.uint8 and (label, index) == (1, 5)
    assert torch.equal(x, ImageNetFolder(root, "train", seed=1, size=SIZE)[(4, 5)][0])
    others = [ds[(5, 5)][0], ImageNetFolder(root, "train", seed=2, size=SIZE)[(4, 5)][0]]
    assert all(not torch.equal(x, o) for o in others)


def test_rrc_box_tries_then_falls_back_to_the_central_crop() -> None:
    # try 1: area fraction 0.08 + 0.5 * 0.92, aspect 1 -> sqrt(0.54 * 1200) = 25.5 -> 25 x 25
    u = [0.5, 0.5, 0.0, 1 - 1e-9] + [0.0] * 36
    assert rrc_box(u, 40, 30) == (15, 0, 25, 25)
    # no try fits a 100 x 10 strip: the central crop of ratio 4/3 at full height
    assert rrc_box([0.5] * 40, 100, 10) == (43, 0, 13, 10)
    assert rrc_box([0.99, 0.5, 0, 0] * 10, 10, 100) == (0, 43, 10, 13)  # full width, 10 / (3/4)


def test_train_and_eval_transforms_output_size() -> None:
    image = Image.new("RGB", (500, 375), (10, 20, 30))
    out = train_image(image, 224, torch.Generator().manual_seed(0))
    assert out.size == (224, 224)
    assert eval_image(image, 256, 224).size == (224, 224)
    tall = Image.fromarray(np.arange(40 * 30 * 3, dtype=np.uint8).reshape(40, 30, 3))
    assert eval_image(tall, 36, 32).size == (32, 32)


def test_normalisation_in_the_worker_equals_on_the_device(root: Path) -> None:
    raw = ImageNetFolder(root, "val", size=SIZE, resize=40)[1][0]
    done = ImageNetFolder(root, "val", size=SIZE, resize=40, normalize=True)[1][0]
    assert done.dtype == torch.float32
    assert torch.allclose(done, normalize_batch(raw), atol=1e-6)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(done, (raw / 255 - mean) / std, atol=1e-5)


def _epochs(loader, epochs: int = 2) -> list[list[torch.Tensor]]:
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out += [list(batch) for batch in loader]
    return out


def test_unreadable_file_is_skipped_counted_and_warned_once(root: Path) -> None:
    warnings: list[str] = []
    ds = ImageNetFolder(root, "train", size=SIZE)
    assert isinstance(ds[6], Unreadable)
    loader = imagenet_loader(ds, 4, seed=0, warn=warnings.append)
    batches = _epochs(loader)
    assert sum(len(i) for _, _, i in batches) == 2 * 11
    assert all(6 not in i.tolist() for _, _, i in batches)
    assert len(warnings) == 1 and f"{WNIDS[1]}_2.JPEG" in warnings[0]
    assert (loader.skipped_files, ds.skipped_files, loader.skipped_samples) == (1, 1, 2)


def test_two_workers_give_the_batches_of_zero_workers(root: Path) -> None:
    warnings: list[str] = []
    batches = {}
    for workers in (0, 2):
        ds = ImageNetFolder(root, "train", seed=5, size=SIZE)
        loader = imagenet_loader(ds, 4, seed=5, workers=workers, warn=warnings.append)
        batches[workers] = _epochs(loader)
        assert loader.skipped_files == 1
    assert len(batches[0]) == len(batches[2])
    for a, b in zip(batches[0], batches[2], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert len(warnings) == 2  # one per loader


def test_val_loader_is_in_file_order(root: Path) -> None:
    ds = ImageNetFolder(root, "val", size=SIZE, resize=40)
    loader = imagenet_loader(ds, 4)
    loader.set_epoch(3)
    images, labels, indices = next(iter(loader))
    assert indices.tolist() == [0, 1, 2, 3] and images.shape == (4, 3, SIZE, SIZE)
    assert labels.tolist() == ds.labels[:4].tolist()
