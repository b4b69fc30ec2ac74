"""Registry, load_dataset (search order, checksums, EMNIST, downloads) and class selection."""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import socket
import threading
import zipfile
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest
import torch
from quiet_http import QuietServer

from sublim.data import (
    FileSpec,
    ImageData,
    base_num_classes,
    dataset_names,
    emnist_splits,
    first_classes,
    get_info,
    load_dataset,
    select_classes,
    write_idx,
)
from sublim.data.registry import BUNDLED_MNIST_DIR, DatasetInfo
from sublim.errors import DataError

# ---------------------------------------------------------------- helpers


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def write_fake(
    directory: Path,
    info: DatasetInfo,
    n_train: int = 20,
    n_test: int = 10,
    shape: tuple[int, int] = (28, 28),
    compress: bool = True,
) -> dict[str, torch.Tensor]:
    """Write a small random dataset with the registry's file names; labels cycle 0..K-1."""
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for part, n in (("train", n_train), ("test", n_test)):
        tensors[f"{part}_x"] = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
        tensors[f"{part}_y"] = (torch.arange(n) % info.num_classes + info.label_offset).to(
            torch.uint8
        )
    for spec, key in zip(info.files, ("train_x", "train_y", "test_x", "test_y"), strict=True):
        write_idx(directory / (spec.name if compress else spec.plain_name), tensors[key], compress)
    return tensors


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def with_checksums(info: DatasetInfo, directory: Path) -> DatasetInfo:
    """The same dataset with digests of the files written in `directory`."""
    names = ("train_images", "train_labels", "test_images", "test_labels")
    specs = {
        n: FileSpec(s.name, (sha256_of(directory / s.name),))
        for n, s in zip(names, info.files, strict=True)
    }
    return replace(info, **specs)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web(tmp_path, monkeypatch):
    """(folder, base URL) of a static HTTP server on 127.0.0.1."""
    monkeypatch.setenv("no_proxy", "*")
    root = tmp_path / "www"
    root.mkdir()
    srv = QuietServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()
    srv.server_close()


def dead_mirror() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


# ---------------------------------------------------------------- registry


def test_registry_names_and_class_counts():
    assert dataset_names() == ["mnist", "fashion-mnist", "kmnist", "emnist"]
    assert set(emnist_splits()) == {"balanced", "letters", "byclass", "bymerge", "digits", "mnist"}
    counts = {"balanced": 47, "letters": 26, "byclass": 62, "bymerge": 47, "digits": 10}
    for split, k in counts.items():
        assert base_num_classes("emnist", split) == k
        assert get_info("emnist", split).num_classes == k
    for name in ("mnist", "fashion-mnist", "kmnist"):
        assert base_num_classes(name) == 10
    assert base_num_classes("MNIST", "nonsense-ignored") == 10
    assert base_num_classes("EMNIST", "Letters") == 26


def test_registry_entries():
    for name in dataset_names():
        info = get_info(name)
        assert info.mean == (0.1307,) and info.std == (0.3081,)
        assert info.mirrors
        for spec in (*info.files, *([info.archive] if info.archive else [])):
            for c in spec.checksums:
                assert re.fullmatch(r"sha256:[0-9a-f]{64}|md5:[0-9a-f]{32}", c), c
    mnist = get_info("Mnist")
    assert mnist.folder == "MNIST" and mnist.bundled == BUNDLED_MNIST_DIR
    assert mnist.mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    sums = dict(
        reversed(line.split())
        for line in (BUNDLED_MNIST_DIR / "SHA256SUMS").read_text().split("\n")
        if line
    )
    for spec in mnist.files:
        assert f"sha256:{sums[spec.name]}" in spec.checksums  # the bundled copies
        assert any(c.startswith("md5:") for c in spec.checksums)  # torchvision's, for mirrors
    letters = get_info("emnist", "LETTERS")
    assert letters.transpose and letters.label_offset == 1 and letters.split == "letters"
    assert letters.train_images.name == "emnist-letters-train-images-idx3-ubyte.gz"
    assert letters.archive.checksums == ("md5:58c8d27c78d21e728a6bc7b3cc06412e",)
    assert get_info("emnist", "balanced").label_offset == 0
    assert get_info("fashion_mnist").folder == "FashionMNIST"
    assert get_info("kmnist").folder == "KMNIST"


def test_registry_rejects_unknown_names():
    with pytest.raises(DataError) as err:
        get_info("cifar10")
    message = one_line(err)
    assert "--dataset" in message and "'cifar10'" in message
    assert "mnist, fashion-mnist, kmnist, emnist" in message
    with pytest.raises(DataError) as err:
        base_num_classes("emnist", "words")
    message = one_line(err)
    assert "--emnist-split" in message and "'words'" in message and "letters" in message


# ---------------------------------------------------------------- bundled MNIST


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> ImageData:
    empty = tmp_path_factory.mktemp("empty-data-dir")
    return load_dataset("mnist", empty, download=False, progress=False)


def test_bundled_mnist_loads(mnist):
    assert mnist.train_x.shape == (60000, 1, 28, 28) and mnist.train_x.dtype == torch.uint8
    assert mnist.test_x.shape == (10000, 1, 28, 28) and mnist.test_x.dtype == torch.uint8
    assert mnist.train_y.dtype == torch.int64 and mnist.test_y.dtype == torch.int64
    assert mnist.train_y[:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist.test_y[:5].tolist() == [7, 2, 1, 0, 4]
    assert set(mnist.train_y.unique().tolist()) == set(range(10))
    assert set(mnist.test_y.unique().tolist()) == set(range(10))
    assert mnist.num_classes == mnist.base_num_classes == 10
    assert mnist.classes == tuple(range(10)) and mnist.name == "mnist" and mnist.split is None
    assert mnist.mean == (0.1307,) and mnist.std == (0.3081,)
    assert 30 < mnist.train_x.float().mean() < 36  # 0.1307 * 255 = 33.3


def test_mnist_copy_with_flipped_byte_is_rejected(tmp_path):
    for spec in get_info("mnist").files:
        shutil.copy(BUNDLED_MNIST_DIR / spec.name, tmp_path / spec.name)
    damaged = tmp_path / "train-labels-idx1-ubyte.gz"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path, download=False)
    message = one_line(err)
    assert str(damaged) in message and "fails its checksum" in message
    assert f"got sha256:{hashlib.sha256(bytes(data)).hexdigest()}" in message
    assert sha256_of(BUNDLED_MNIST_DIR / damaged.name) in message  # expected digest
    assert "delete it" in message


def test_damaged_bundled_copy_is_rejected(tmp_path):
    bundled = tmp_path / "bundled"
    shutil.copytree(BUNDLED_MNIST_DIR, bundled)
    data = bytearray((bundled / "t10k-images-idx3-ubyte.gz").read_bytes())
    data[1000] ^= 0x80
    (bundled / "t10k-images-idx3-ubyte.gz").write_bytes(bytes(data))
    info = replace(get_info("mnist"), bundled=bundled)
    with pytest.raises(DataError, match="reinstall sublim") as err:
        load_dataset(info, tmp_path / "data", download=False)
    assert "t10k-images-idx3-ubyte.gz" in one_line(err)


def test_torchvision_raw_layout_is_found_before_bundled(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    fake = write_fake(raw, get_info("mnist"), n_train=30, n_test=12, compress=False)
    data = load_dataset("MNIST", tmp_path, download=False)
    assert data.train_x.shape == (30, 1, 28, 28) and data.test_x.shape == (12, 1, 28, 28)
    assert torch.equal(data.train_x[:, 0], fake["train_x"])
    assert torch.equal(data.test_y, fake["test_y"].long())


# ---------------------------------------------------------------- EMNIST


def test_emnist_letters_upright_and_shifted(tmp_path):
    info = get_info("emnist", "letters")
    fake = write_fake(tmp_path, info, n_train=52, n_test=26, shape=(5, 7))
    fake["train_x"][0] = 0
    fake["train_x"][0, 0, 6] = 255  # stored row 0, column 6
    write_idx(tmp_path / info.train_images.name, fake["train_x"], compress=True)
    data = load_dataset("emnist", tmp_path, emnist_split="Letters", download=False)
    assert data.train_x.shape == (52, 1, 7, 5)  # H and W swapped back
    assert torch.equal(data.train_x[:, 0], fake["train_x"].transpose(1, 2))
    assert data.train_x[0, 0, 6, 0] == 255 and data.train_x[0].sum() == 255
    assert fake["train_y"].min() == 1 and fake["train_y"].max() == 26
    assert torch.equal(data.train_y, fake["train_y"].long() - 1)
    assert data.train_y.min() == 0 and data.train_y.max() == 25
    assert data.num_classes == 26 and data.split == "letters" and data.name == "emnist"
    first = first_classes(data, 3)
    assert first.train_y.tolist() == [0, 1, 2, 0, 1, 2] and first.classes == (0, 1, 2)


def make_emnist_zip(path: Path, split: str) -> DatasetInfo:
    """A fake gzip.zip holding one split under gzip/, and the registry entry with its md5."""
    info = get_info("emnist", split)
    members = path.parent / "members"
    write_fake(members, info, n_train=47, n_test=20)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("gzip/README", "fake")
        for spec in info.files:
            zf.write(members / spec.name, "gzip/" + spec.name)
    shutil.rmtree(members)
    md5 = "md5:" + hashlib.md5(path.read_bytes()).hexdigest()
    return replace(info, archive=FileSpec("gzip.zip", (md5,)))


def test_emnist_extracted_from_local_zip(tmp_path):
    info = make_emnist_zip(tmp_path / "data" / "EMNIST" / "raw" / "gzip.zip", "balanced")
    data = load_dataset(info, tmp_path / "data", download=False)
    assert data.train_x.shape == (47, 1, 28, 28) and data.num_classes == 47
    assert sorted(data.train_y.tolist()) == list(range(47))
    assert listing(tmp_path / "data") == sorted(["EMNIST", *(s.name for s in info.files)])


def test_emnist_zip_with_wrong_checksum_is_rejected(tmp_path):
    info = make_emnist_zip(tmp_path / "gzip.zip", "digits")
    info = replace(info, archive=FileSpec("gzip.zip", ("md5:" + "0" * 32,)))
    with pytest.raises(DataError, match="gzip.zip fails its checksum"):
        load_dataset(info, tmp_path, download=False)


def test_emnist_zip_downloaded_and_extracted(tmp_path, web):
    root, url = web
    info = make_emnist_zip(root / "emnist" / "gzip.zip", "digits")
    info = replace(info, mirrors=(dead_mirror(), url + "emnist/"))
    data_dir = tmp_path / "new" / "data"
    data = load_dataset(info, data_dir, progress=False)
    assert data.train_x.shape == (47, 1, 28, 28) and data.num_classes == 10
    assert listing(data_dir) == sorted(["gzip.zip", *(s.name for s in info.files)])


# ---------------------------------------------------------------- downloads and missing files


def test_download_into_data_dir(tmp_path, web):
    root, url = web
    info = get_info("fashion-mnist")
    fake = write_fake(root / "fm", info)
    info = replace(with_checksums(info, root / "fm"), mirrors=(dead_mirror(), url + "fm/"))
    data = load_dataset(info, tmp_path / "data", progress=False)
    assert torch.equal(data.test_x[:, 0], fake["test_x"])
    assert listing(tmp_path / "data") == sorted(s.name for s in info.files)
    again = load_dataset(info, tmp_path / "data", download=False)  # now found locally
    assert torch.equal(again.train_y, data.train_y)


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("kmnist", tmp_path, download=False)
    message = one_line(err)
    assert "--dataset kmnist" in message and "downloading is disabled" in message
    for spec in get_info("kmnist").files:
        assert spec.name in message
    assert str(tmp_path) in message and str(tmp_path / "KMNIST" / "raw") in message
    assert "http://codh.rois.ac.jp/kmnist/dataset/kmnist/" in message
    assert listing(tmp_path) == []


def test_emnist_missing_without_download_names_the_zip(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("emnist", tmp_path, emnist_split="letters", download=False)
    message = one_line(err)
    assert "--emnist-split letters" in message
    assert "emnist-letters-train-images-idx3-ubyte.gz" in message
    assert "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip" in message


def test_failed_download_names_files_dirs_and_urls(tmp_path, web):
    root, url = web
    info = get_info("fashion-mnist")
    write_fake(root / "fm", info)
    info = with_checksums(info, root / "fm")
    (root / "fm" / info.test_labels.name).unlink()  # the last file is gone from the mirror
    info = replace(info, mirrors=(url + "fm/",))
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as err:
        load_dataset(info, data_dir, progress=False)
    message = one_line(err)
    assert f"cannot find {info.test_labels.name} " in message  # only the one still missing
    assert url + "fm/" + info.test_labels.name + ": HTTP 404" in message
    assert str(data_dir / "FashionMNIST" / "raw") in message
    assert listing(data_dir) == sorted(s.name for s in info.files[:3])  # no partial file


def test_count_mismatch_and_label_range(tmp_path):
    info = get_info("kmnist")
    write_fake(tmp_path, info, compress=False)
    write_idx(tmp_path / info.test_labels.plain_name, torch.zeros(9, dtype=torch.uint8))
    with pytest.raises(DataError, match="has 10 images but .* has 9 labels"):
        load_dataset("kmnist", tmp_path, download=False)
    write_idx(tmp_path / info.test_labels.plain_name, torch.full((10,), 10, dtype=torch.uint8))
    with pytest.raises(DataError, match=r"labels 10..10, outside 0..9"):
        load_dataset("kmnist", tmp_path, download=False)


# ---------------------------------------------------------------- class selection


def tiny() -> ImageData:
    train_y = torch.tensor([0, 1, 2, 3, 3, 1, 0, 2])
    test_y = torch.tensor([3, 2, 1, 0])
    return ImageData(
        train_x=(train_y * 10).to(torch.uint8).view(-1, 1, 1, 1),
        train_y=train_y,
        test_x=(test_y * 10).to(torch.uint8).view(-1, 1, 1, 1),
        test_y=test_y,
        num_classes=4,
        base_num_classes=4,
        classes=(0, 1, 2, 3),
        mean=(0.5,),
        std=(0.25,),
        name="tiny",
    )


def test_select_classes_remaps_in_given_order():
    data = select_classes(tiny(), [3, 1])
    assert data.train_y.tolist() == [1, 0, 0, 1]  # 1 -> 1, 3 -> 0, order of samples kept
    assert data.train_x.flatten().tolist() == [10, 30, 30, 10]
    assert data.test_y.tolist() == [0, 1] and data.test_x.flatten().tolist() == [30, 10]
    assert data.classes == (3, 1) and data.num_classes == 2 and data.base_num_classes == 4
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    # Labels refer to original classes, also after a first selection.
    again = select_classes(select_classes(tiny(), [2, 3, 1]), [1, 3])
    assert again.classes == (1, 3) and again.test_y.tolist() == [1, 0]


def test_first_classes():
    data = first_classes(tiny(), 2)
    assert data.classes == (0, 1) and data.train_y.tolist() == [0, 1, 1, 0]
    with pytest.raises(DataError, match="--class-count"):
        first_classes(tiny(), 5)


@pytest.mark.parametrize(
    ("classes", "why"), [([], "no classes"), ([1, 1], "repeats"), ([7], "0..3")]
)
def test_select_classes_rejects_bad_lists(classes, why):
    with pytest.raises(DataError, match=why) as err:
        select_classes(tiny(), classes)
    assert "--classes" in one_line(err)
