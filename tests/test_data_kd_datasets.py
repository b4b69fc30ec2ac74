"""CIFAR-100, SVHN (MAT v5 reader) and TinyImageNet loaders on small generated files.

Downloads are served by a real HTTP server on 127.0.0.1; nothing else is contacted.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
import zipfile
import zlib
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from quiet_http import QuietServer

from sublim.data.cifar100 import (
    CIFAR100_ARCHIVE,
    CIFAR100_CLASSES,
    CIFAR100_DIR,
    CIFAR100_MEAN,
    CIFAR100_STD,
    load_cifar100,
)
from sublim.data.svhn import (
    SVHN_CLASSES,
    SVHN_EXTRA,
    SVHN_MEAN,
    SVHN_STD,
    SVHN_TEST,
    SVHN_TRAIN,
    load_svhn,
    read_mat5,
)
from sublim.data.tinyimagenet import (
    TINYIMAGENET_ARCHIVE,
    TINYIMAGENET_CLASSES,
    TINYIMAGENET_DIR,
    TINYIMAGENET_MEAN,
    TINYIMAGENET_STD,
    load_tinyimagenet,
)
from sublim.errors import DataError

ZERO_MD5 = "md5:" + "0" * 32


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def md5(path: Path) -> str:
    return "md5:" + hashlib.md5(path.read_bytes()).hexdigest()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web(tmp_path, monkeypatch):
    """(folder, base URL) of a static HTTP server on 127.0.0.1."""
    monkeypatch.setenv("no_proxy", "*")
    root = tmp_path / "www"
    root.mkdir()
    srv = QuietServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=root))
    threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()
    srv.server_close()


def dead_base() -> str:
    """A 127.0.0.1 URL on which nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def test_constants():
    assert (CIFAR100_CLASSES, SVHN_CLASSES, TINYIMAGENET_CLASSES) == (100, 10, 200)
    assert CIFAR100_MEAN == (0.5071, 0.4865, 0.4409) and CIFAR100_STD == (0.2673, 0.2564, 0.2762)
    assert SVHN_MEAN == (0.4377, 0.4438, 0.4728) and SVHN_STD == (0.1980, 0.2010, 0.1970)
    assert TINYIMAGENET_MEAN == (0.4802, 0.4481, 0.3975)
    assert TINYIMAGENET_STD == (0.2302, 0.2265, 0.2262)


# ---------------------------------------------------------------- CIFAR-100

SPLIT_SIZES = {"train": 30, "test": 12}


def fake_cifar100(seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(seed)
    splits = {
        name: (
            rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            [int(v) for v in rng.integers(0, 100, n)],
        )
        for name, n in SPLIT_SIZES.items()
    }
    splits["train"][1][:2] = [0, 99]  # both ends of the range
    return splits


def cifar100_bytes(data: object, fine: object) -> bytes:
    """A split in the published layout: protocol-2 pickle, bytes keys, fine and coarse labels."""
    n = len(data) if hasattr(data, "__len__") else 0
    split = {
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        b"batch_label": b"training batch 1 of 1",
        b"fine_labels": fine,
        b"coarse_labels": [0] * n,
        b"data": data,
    }
    return pickle.dumps(split, protocol=2)


def cifar100_members(splits: dict) -> dict[str, bytes]:
    members = {f"{CIFAR100_DIR}/{n}": cifar100_bytes(d, f) for n, (d, f) in splits.items()}
    members[f"{CIFAR100_DIR}/meta"] = pickle.dumps({b"fine_label_names": []}, protocol=2)
    members[f"{CIFAR100_DIR}/file.txt~"] = b""
    return members


def make_tar(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tf:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    return md5(path)


def check_cifar100(result: tuple, splits: dict) -> None:
    train_x, train_y, test_x, test_y = result
    for x, y, name in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        data, fine = splits[name]
        n = SPLIT_SIZES[name]
        assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
        assert y.shape == (n,) and y.dtype == torch.int64 and y.tolist() == fine
        assert torch.equal(x.reshape(n, -1), torch.from_numpy(data))
        assert int(x[3, 2, 5, 7]) == int(data[3, 2 * 1024 + 5 * 32 + 7])
        x[0, 0, 0, 0] = 1  # writable, without a warning


@pytest.mark.parametrize("sub", [CIFAR100_DIR, "."])
def test_cifar100_from_files(tmp_path, sub):
    splits = fake_cifar100()
    (tmp_path / sub).mkdir(exist_ok=True)
    for name, (data, fine) in splits.items():
        (tmp_path / sub / name).write_bytes(cifar100_bytes(data, fine))
    check_cifar100(load_cifar100(tmp_path, download=False, urls=(dead_base(),)), splits)


def test_cifar100_download_archive_and_checksums(tmp_path, web):
    folder, base = web
    splits = fake_cifar100(1)
    digest = make_tar(folder / CIFAR100_ARCHIVE, cifar100_members(splits))
    data_dir, url = tmp_path / "data", base + CIFAR100_ARCHIVE
    check_cifar100(load_cifar100(data_dir, urls=(url,), checksum=digest), splits)
    assert sorted(p.name for p in data_dir.iterdir()) == [CIFAR100_DIR, CIFAR100_ARCHIVE]
    assert sorted(p.name for p in (data_dir / CIFAR100_DIR).iterdir()) == ["test", "train"]
    # The archive alone is extracted again, without a download.
    (data_dir / CIFAR100_DIR / "test").unlink()
    again = load_cifar100(data_dir, download=False, urls=(dead_base(),), checksum=digest)
    check_cifar100(again, splits)
    # An archive in data_dir is verified before use.
    (data_dir / CIFAR100_DIR / "train").unlink()
    with pytest.raises(DataError) as err:
        load_cifar100(data_dir, download=False, checksum=ZERO_MD5)
    assert "fails its checksum" in one_line(err) and CIFAR100_ARCHIVE in one_line(err)
    # A download that fails its checksum leaves nothing behind.
    with pytest.raises(DataError) as err:
        load_cifar100(tmp_path / "other", urls=(url,), checksum=ZERO_MD5)
    assert "checksum mismatch" in one_line(err) and url in one_line(err)
    assert list((tmp_path / "other").iterdir()) == []


def test_cifar100_missing_without_download(tmp_path):
    with pytest.raises(DataError) as err:
        load_cifar100(tmp_path, download=False)
    message = one_line(err)
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert "downloading is disabled" in message and "train, test" in message


@pytest.mark.parametrize(
    "data, fine, expected",
    [
        (np.zeros((12, 3072), np.uint8), [100] * 12, "outside 0..99"),
        (np.zeros((12, 3072), np.uint8), [0] * 11, "fine_labels"),
        (np.zeros((12, 1024), np.uint8), [0] * 12, "3072"),
        (np.zeros((12, 3072), np.int16), [0] * 12, "uint8"),
    ],
)
def test_cifar100_bad_split(tmp_path, data, fine, expected):
    splits = fake_cifar100()
    (tmp_path / "train").write_bytes(cifar100_bytes(*splits["train"]))
    (tmp_path / "test").write_bytes(cifar100_bytes(data, fine))
    with pytest.raises(DataError) as err:
        load_cifar100(tmp_path, download=False)
    assert expected in one_line(err) and str(tmp_path / "test") in one_line(err)


def test_cifar100_refuses_code_and_damage(tmp_path):
    splits = fake_cifar100()
    (tmp_path / "train").write_bytes(cifar100_bytes(*splits["train"]))
    evil = pickle.dumps({b"data": os.system}, protocol=2)  # a global no CIFAR pickle needs
    (tmp_path / "test").write_bytes(evil)
    with pytest.raises(DataError) as err:
        load_cifar100(tmp_path, download=False)
    assert "system" in one_line(err) and "refusing" in one_line(err)
    (tmp_path / "test").write_bytes(cifar100_bytes(*splits["test"])[:300])
    with pytest.raises(DataError) as err:
        load_cifar100(tmp_path, download=False)
    assert str(tmp_path / "test") in one_line(err) and "delete it" in one_line(err)


def test_cifar100_bad_archives(tmp_path):
    archive = tmp_path / CIFAR100_ARCHIVE
    members = cifar100_members(fake_cifar100())
    members["../train"] = members[f"{CIFAR100_DIR}/train"]
    make_tar(archive, members)
    with pytest.raises(DataError) as err:
        load_cifar100(tmp_path, download=False, checksum=None)
    assert "unsafe member '../train'" in one_line(err)
    assert list((tmp_path / CIFAR100_DIR).iterdir()) == []
    del members["../train"], members[f"{CIFAR100_DIR}/test"]
    make_tar(archive, members)
    with pytest.raises(DataError) as err:
        load_cifar100(tmp_path, download=False, checksum=None)
    assert "has no test" in one_line(err) and "CIFAR-100" in one_line(err)
    archive.write_bytes(os.urandom(2000))
    with pytest.raises(DataError) as err:
        load_cifar100(tmp_path, download=False, checksum=None)
    assert "cannot extract CIFAR-100" in one_line(err)


# ---------------------------------------------------------------- MAT v5 writer (for the tests)

MI_TYPES = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 9, "i8": 12}
MX_CLASSES = {"f8": 6, "f4": 7, "i1": 8, "u1": 9, "i2": 10, "u2": 11, "i4": 12, "u4": 13}


def element(mtype: int, data: bytes, order: str, small: bool = True) -> bytes:
    """A data element: the packed small form when allowed and data fits in 4 bytes."""
    if small and len(data) <= 4:
        return struct.pack(order + "I", len(data) << 16 | mtype) + data.ljust(4, b"\0")
    return struct.pack(order + "II", mtype, len(data)) + data + b"\0" * (-len(data) % 8)


def matrix(
    name: str,
    array: np.ndarray,
    stored: str | None = None,
    order: str = "<",
    small: bool = True,
    mx_class: int | None = None,
    flags: int = 0,
) -> bytes:
    """A miMATRIX element: MATLAB class from array's dtype, values stored as `stored`."""
    stored = stored or array.dtype.str[1:]
    mx = MX_CLASSES[array.dtype.str[1:]] if mx_class is None else mx_class
    body = element(6, struct.pack(order + "II", mx | flags, 0), order)
    body += element(5, np.asarray(array.shape, order + "i4").tobytes(), order)
    body += element(1, name.encode(), order, small)
    values = array.astype(np.dtype(stored).newbyteorder(order)).tobytes(order="F")
    body += element(MI_TYPES[stored], values, order, small)
    return struct.pack(order + "II", 14, len(body)) + body


def mat_file(matrices: list[bytes], compress: bool | list[bool], order: str = "<") -> bytes:
    """A level-5 MAT file: header, then each matrix, zlib-compressed (unpadded) or as is."""
    text = b"MATLAB 5.0 MAT-file, Platform: test, Created on: today".ljust(116, b" ")
    out = text + b"\0" * 8 + struct.pack(order + "H", 0x0100) + (b"IM" if order == "<" else b"MI")
    flags = compress if isinstance(compress, list) else [compress] * len(matrices)
    for m, c in zip(matrices, flags, strict=True):
        if c:
            packed = zlib.compress(m)
            m = struct.pack(order + "II", 15, len(packed)) + packed
        out += m
    return out


def svhn_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """X uint8 (32, 32, 3, n) and y double (n, 1) in 1..10, as MATLAB holds them."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.float64)
    y[:2, 0] = [10, 1]
    return x, y


def svhn_file(x: np.ndarray, y: np.ndarray, compress: bool = True, order: str = "<") -> bytes:
    return mat_file(
        [matrix("X", x, order=order), matrix("y", y, "u1", order=order)], compress, order
    )


# ---------------------------------------------------------------- MAT v5 reader


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("compress", [True, False, [True, False, True, False, False]])
def test_read_mat5_forms(tmp_path, order, compress):
    grid = np.arange(6, dtype=np.float64).reshape(2, 3) * 1.5  # column-major check
    small = np.array([[7, 250]], np.uint8)  # 2 bytes: small element form
    negative = np.array([[-3.0], [2.0], [-1000.0]])  # a double array stored as int16
    column = np.array([[1], [2], [300]], np.int32)  # int32 class stored as uint16
    big = np.random.default_rng(5).integers(0, 256, (4, 5, 3, 2), dtype=np.uint8)
    matrices = [
        matrix("grid", grid, order=order),
        matrix("small", small, order=order),
        matrix("negative", negative, "i2", order=order),
        matrix("column", column, "u2", order=order, small=False),
        matrix("big", big, order=order),
    ]
    path = tmp_path / "a.mat"
    path.write_bytes(mat_file(matrices, compress, order))
    got = read_mat5(path)
    assert list(got) == ["grid", "small", "negative", "column", "big"]
    expected = {"grid": grid, "small": small, "negative": negative, "column": column, "big": big}
    for name, want in expected.items():
        assert got[name].dtype == want.dtype.newbyteorder("=") and got[name].shape == want.shape
        assert np.array_equal(got[name], want), name
    assert got["grid"][1, 2] == 7.5 and got["grid"][0, 1] == 1.5


def test_read_mat5_small_element_bytes(tmp_path):
    """The packed form on disk: type in the low half, size in the high half, data after."""
    body = matrix("y", np.array([[3.0]]), "u1")
    assert struct.pack("<HH", 1, 1) + b"y\0\0\0" in body  # name: miINT8, 1 byte
    assert body.endswith(struct.pack("<HH", 2, 1) + b"\x03\0\0\0")  # value: miUINT8, 1 byte
    path = tmp_path / "y.mat"
    path.write_bytes(mat_file([body], False))
    value = read_mat5(path)["y"]
    assert value.dtype == np.float64 and value.tolist() == [[3.0]]


def test_read_mat5_refusals(tmp_path):
    path = tmp_path / "bad.mat"
    good = matrix("a", np.ones((2, 2)))
    cases = [
        (b"MATLAB 7.3 MAT-file" + b"\0" * 200, "7.3 (HDF5)"),
        (b"not a mat file".ljust(128), "header"),
        (mat_file([good], False)[:126] + b"XX", "endian"),
        (mat_file([good], True)[:-5], "compressed element"),
        (mat_file([good], False)[:-9], "ends inside"),
        (mat_file([good, good], False), "appears twice"),
        (mat_file([matrix("c", np.ones((2, 2)), mx_class=1)], True), "class cell"),
        (mat_file([matrix("s", np.ones((2, 2)), mx_class=4)], False), "class char"),
        (mat_file([matrix("z", np.ones((2, 2)), flags=0x0800)], False), "complex"),
        (mat_file([matrix("w", np.array([[300.0]]), "u2", mx_class=9)], False), "class uint8"),
        (mat_file([good], False) + struct.pack("<II", 2, 8) + b"\0" * 8, "type 2"),
        (mat_file([good], False)[:128] + struct.pack("<II", 15, 20) + bytes(20), "Error"),
    ]
    for body, expected in cases:
        path.write_bytes(body)
        with pytest.raises(DataError) as err:
            read_mat5(path)
        message = one_line(err)
        assert str(path) in message and expected in message, (expected, message)
    # A compressed element that claims a huge matrix is refused before allocating it.
    bomb = zlib.compress(struct.pack("<II", 14, 2**32 - 8))
    path.write_bytes(mat_file([], False) + struct.pack("<II", 15, len(bomb)) + bomb)
    with pytest.raises(DataError) as err:
        read_mat5(path)
    assert "claims" in one_line(err)


# ---------------------------------------------------------------- SVHN


def write_svhn(folder: Path, extra: bool = False, compress: bool = True) -> dict[str, tuple]:
    """Write train (7), test (5) and optionally extra (4) files; returns name -> (X, y)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {SVHN_TRAIN: svhn_arrays(7, 1), SVHN_TEST: svhn_arrays(5, 2)}
    if extra:
        arrays[SVHN_EXTRA] = svhn_arrays(4, 3)
    for name, (x, y) in arrays.items():
        (folder / name).write_bytes(svhn_file(x, y, compress))
    return arrays


def check_svhn_part(x: torch.Tensor, y: torch.Tensor, parts: list[tuple]) -> None:
    mx = np.concatenate([p[0] for p in parts], axis=3)
    my = np.concatenate([p[1] for p in parts])[:, 0]
    n = mx.shape[3]
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    assert y.shape == (n,) and y.dtype == torch.int64
    for i, c, h, w in [(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 0), (1, 2, 31, 0), (n - 1, 1, 3, 29)]:
        assert int(x[i, c, h, w]) == int(mx[h, w, c, i])  # MATLAB X(h, w, c, i)
    assert np.array_equal(x.numpy(), mx.transpose(3, 2, 0, 1))
    assert y.tolist() == [int(v) % 10 for v in my] and y[0] == 0 and y[1] == 1  # 10 -> 0
    assert int(y.min()) >= 0 and int(y.max()) <= 9


@pytest.mark.parametrize("compress", [True, False])
def test_svhn_from_files(tmp_path, compress):
    arrays = write_svhn(tmp_path / "svhn", extra=True, compress=compress)
    checksums = {name: md5(tmp_path / "svhn" / name) for name in arrays}
    train_x, train_y, test_x, test_y = load_svhn(tmp_path, download=False, checksums=checksums)
    check_svhn_part(train_x, train_y, [arrays[SVHN_TRAIN]])
    check_svhn_part(test_x, test_y, [arrays[SVHN_TEST]])
    train_x, train_y, _, _ = load_svhn(tmp_path, download=False, extra=True, checksums=checksums)
    check_svhn_part(train_x, train_y, [arrays[SVHN_TRAIN], arrays[SVHN_EXTRA]])


def test_svhn_download_and_checksums(tmp_path, web):
    folder, base = web
    arrays = write_svhn(folder, extra=True)
    checksums = {name: md5(folder / name) for name in arrays}
    data_dir = tmp_path / "data"
    result = load_svhn(data_dir, extra=True, urls=(base.rstrip("/"),), checksums=checksums)
    check_svhn_part(result[0], result[1], [arrays[SVHN_TRAIN], arrays[SVHN_EXTRA]])
    check_svhn_part(result[2], result[3], [arrays[SVHN_TEST]])
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(arrays)
    # A file present in data_dir is verified.
    with pytest.raises(DataError) as err:
        load_svhn(data_dir, download=False, checksums={**checksums, SVHN_TEST: ZERO_MD5})
    assert "fails its checksum" in one_line(err) and str(data_dir / SVHN_TEST) in one_line(err)
    # A download failing its checksum is refused and leaves nothing behind.
    with pytest.raises(DataError) as err:
        load_svhn(tmp_path / "other", urls=(base,), checksums={SVHN_TRAIN: ZERO_MD5})
    message = one_line(err)
    assert "checksum mismatch" in message and base + SVHN_TRAIN in message
    assert list((tmp_path / "other").iterdir()) == []


def test_svhn_missing_without_download(tmp_path):
    write_svhn(tmp_path)
    (tmp_path / SVHN_TEST).unlink()
    with pytest.raises(DataError) as err:
        load_svhn(tmp_path, download=False, extra=True, checksums={})
    message = one_line(err)
    assert "http://ufldl.stanford.edu/housenumbers/test_32x32.mat" in message
    assert "http://ufldl.stanford.edu/housenumbers/extra_32x32.mat" in message
    assert "train_32x32.mat from" not in message and "downloading is disabled" in message


@pytest.mark.parametrize(
    "variables, expected",
    [
        ([matrix("X", np.zeros((32, 32, 3, 2), np.uint8))], "not SVHN's X and y"),
        ([matrix("X", np.zeros((32, 32, 3, 2))), matrix("y", np.ones((2, 1)))], "not uint8"),
        ([matrix("X", np.zeros((32, 32, 3, 2), np.uint8)), matrix("y", np.ones((3, 1)))], "shape"),
        ([matrix("X", np.zeros((32, 32, 3, 2), np.uint8)), matrix("y", np.zeros((2, 1)))], "1..10"),
        (
            [matrix("X", np.zeros((32, 32, 3, 1), np.uint8)), matrix("y", np.full((1, 1), 11.0))],
            "1..10",
        ),
        (
            [matrix("X", np.zeros((32, 32, 3, 1), np.uint8)), matrix("y", np.full((1, 1), 2.5))],
            "1..10",
        ),
    ],
)
def test_svhn_bad_contents(tmp_path, variables, expected):
    write_svhn(tmp_path)
    (tmp_path / SVHN_TEST).write_bytes(mat_file(variables, True))
    with pytest.raises(DataError) as err:
        load_svhn(tmp_path, download=False, checksums={})
    assert expected in one_line(err) and str(tmp_path / SVHN_TEST) in one_line(err)


def test_svhn_damaged_file(tmp_path):
    write_svhn(tmp_path)
    body = bytearray((tmp_path / SVHN_TRAIN).read_bytes())
    body[400:420] = bytes(20)  # inside the compressed X
    (tmp_path / SVHN_TRAIN).write_bytes(bytes(body))
    with pytest.raises(DataError) as err:
        load_svhn(tmp_path, download=False, checksums={})
    assert str(tmp_path / SVHN_TRAIN) in one_line(err) and "delete it" in one_line(err)


# ---------------------------------------------------------------- TinyImageNet

WNIDS = ["n03", "n01", "n02"]  # not sorted: the class index is the line order
TRAIN_PER_CLASS = 3
VAL = [("val_0.JPEG", "n02"), ("val_1.JPEG", "n03"), ("val_2.JPEG", "n01"), ("val_3.JPEG", "n02")]
NOISE = np.random.default_rng(9).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def tiny_colour(key: int) -> tuple[int, int, int]:
    return 10 + 17 * key, 240 - 15 * key, 40 + (53 * key) % 180


def tiny_files() -> dict[str, bytes]:
    """Relative path -> contents of a small TinyImageNet folder (one grey, one lossless noise)."""
    files: dict[str, bytes] = {"wnids.txt": ("\n".join(WNIDS) + "\n").encode()}
    files["words.txt"] = b"n01\tone\nn02\ttwo\nn03\tthree\n"
    key = 0
    for wnid in WNIDS:
        files[f"train/{wnid}/{wnid}_boxes.txt"] = b"0 0 63 63\n"
        for i in range(TRAIN_PER_CLASS):
            files[f"train/{wnid}/images/{wnid}_{i}.JPEG"] = jpeg(key, grey=(wnid, i) == ("n01", 1))
            key += 1
    # Lossless pixels (PNG content; Pillow reads by content) pin the H/W/C layout exactly.
    buffer = io.BytesIO()
    Image.fromarray(NOISE).save(buffer, format="PNG")
    files["train/n02/images/n02_0.JPEG"] = buffer.getvalue()
    for name, _ in VAL:
        files[f"val/images/{name}"] = jpeg(key)
        key += 1
    lines = [f"{name}\t{wnid}\t0\t0\t63\t63" for name, wnid in VAL]
    files["val/val_annotations.txt"] = ("\n".join(lines) + "\n").encode()
    files["test/images/test_0.JPEG"] = jpeg(key)
    return files


def jpeg(key: int, grey: bool = False) -> bytes:
    buffer = io.BytesIO()
    r, g, b = tiny_colour(key)
    image = Image.new("L", (64, 64), r) if grey else Image.new("RGB", (64, 64), (r, g, b))
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_tiny(root: Path, files: dict[str, bytes] | None = None) -> None:
    for rel, body in (files or tiny_files()).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)


def make_zip(path: Path, files: dict[str, bytes], prefix: str = TINYIMAGENET_DIR + "/") -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(prefix, b"")  # a directory entry, as in the published archive
        for rel, body in files.items():
            zf.writestr(prefix + rel, body)
    return md5(path)


def near(image: torch.Tensor, rgb: tuple[int, int, int]) -> bool:
    return bool((image.float().mean(dim=(1, 2)) - torch.tensor(rgb)).abs().max() <= 3)


def check_tiny(result: tuple, skipped: set[str] = frozenset()) -> None:
    train_x, train_y, test_x, test_y = result
    train = [(w, i) for w in WNIDS for i in range(TRAIN_PER_CLASS) if f"{w}_{i}" not in skipped]
    assert train_x.shape == (len(train), 3, 64, 64) and train_x.dtype == torch.uint8
    assert train_x.is_contiguous() and test_x.is_contiguous()
    assert train_y.dtype == torch.int64 and test_y.dtype == torch.int64
    assert train_y.tolist() == [WNIDS.index(w) for w, _ in train]
    for image, (wnid, i) in zip(train_x, train, strict=True):
        key = WNIDS.index(wnid) * TRAIN_PER_CLASS + i
        if (wnid, i) == ("n02", 0):
            assert torch.equal(image, torch.from_numpy(NOISE).permute(2, 0, 1))
        elif (wnid, i) == ("n01", 1):
            assert near(image, (tiny_colour(key)[0],) * 3)  # grey decoded as RGB
        else:
            assert near(image, tiny_colour(key)), (wnid, i)
    assert test_x.shape == (len(VAL), 3, 64, 64)
    assert test_y.tolist() == [WNIDS.index(w) for _, w in VAL]
    for k, image in enumerate(test_x):
        assert near(image, tiny_colour(len(WNIDS) * TRAIN_PER_CLASS + k))


@pytest.mark.parametrize("sub", [TINYIMAGENET_DIR, "."])
def test_tiny_from_folder(tmp_path, sub):
    write_tiny(tmp_path / sub)
    check_tiny(load_tinyimagenet(tmp_path, download=False, urls=(dead_base(),)))


def test_tiny_download_extract_and_reuse(tmp_path, web):
    folder, base = web
    digest = make_zip(folder / TINYIMAGENET_ARCHIVE, tiny_files())
    data_dir, url = tmp_path / "data", base + TINYIMAGENET_ARCHIVE
    check_tiny(load_tinyimagenet(data_dir, urls=(url,), checksum=digest))
    root = data_dir / TINYIMAGENET_DIR
    assert sorted(p.name for p in data_dir.iterdir()) == [TINYIMAGENET_DIR, TINYIMAGENET_ARCHIVE]
    assert sorted(p.name for p in root.iterdir()) == ["train", "val", "wnids.txt", "words.txt"]
    assert not [p for p in root.rglob(".*")]  # no temp files left
    # An interrupted extraction (index files absent) is redone from the archive.
    (root / "wnids.txt").unlink()
    (root / "train" / "n01" / "images" / "n01_2.JPEG").unlink()
    check_tiny(load_tinyimagenet(data_dir, download=False, urls=(dead_base(),), checksum=digest))
    # A complete folder is used as is: no archive needed.
    (data_dir / TINYIMAGENET_ARCHIVE).unlink()
    check_tiny(load_tinyimagenet(data_dir, download=False, urls=(dead_base(),)))
    # An archive in data_dir is verified before use.
    (root / "val" / "val_annotations.txt").unlink()
    make_zip(data_dir / TINYIMAGENET_ARCHIVE, tiny_files())
    with pytest.raises(DataError) as err:
        load_tinyimagenet(data_dir, download=False, checksum=ZERO_MD5)
    assert "fails its checksum" in one_line(err)


def test_tiny_checksum_mismatch_and_missing(tmp_path, web):
    folder, base = web
    make_zip(folder / TINYIMAGENET_ARCHIVE, tiny_files())
    url = base + TINYIMAGENET_ARCHIVE
    with pytest.raises(DataError) as err:
        load_tinyimagenet(tmp_path / "a", urls=(url,), checksum=ZERO_MD5)
    assert "checksum mismatch" in one_line(err) and url in one_line(err)
    assert list((tmp_path / "a").iterdir()) == []
    with pytest.raises(DataError) as err:
        load_tinyimagenet(tmp_path / "b", download=False)
    message = one_line(err)
    assert "http://cs231n.stanford.edu/tiny-imagenet-200.zip" in message
    assert "downloading is disabled" in message and "wnids.txt" in message


def test_tiny_unreadable_images_skipped_with_one_warning(tmp_path, capsys):
    files = tiny_files()
    files["train/n03/images/n03_1.JPEG"] = b"\xff\xd8 not a jpeg"
    files["train/n01/images/n01_0.JPEG"] = files["train/n01/images/n01_0.JPEG"][:100]
    write_tiny(tmp_path, files)
    warnings: list[str] = []
    result = load_tinyimagenet(tmp_path, download=False, warn=warnings.append)
    check_tiny(result, skipped={"n03_1", "n01_0"})
    assert len(warnings) == 1 and "\n" not in warnings[0]
    total = len(WNIDS) * TRAIN_PER_CLASS + len(VAL)
    assert warnings[0].startswith(f"skipped 2 unreadable images of {total} under {tmp_path}:")
    assert "train/n03/images/n03_1.JPEG (" in warnings[0]
    assert "train/n01/images/n01_0.JPEG (" in warnings[0]
    load_tinyimagenet(tmp_path, download=False)  # default: one line on stderr
    err = capsys.readouterr().err.strip()
    assert err.startswith("sublim: warning: skipped 2 unreadable") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"val/val_annotations.txt": b"val_0.JPEG\tn09\t0\t0\t1\t1\n"}, "n09 (line 1)"),
        ({"val/val_annotations.txt": b"nope.JPEG\tn01\t0\t0\t1\t1\n"}, "missing from"),
        ({"val/val_annotations.txt": b"../x.JPEG\tn01\n"}, "line 1"),
        ({"val/val_annotations.txt": b"val_0.JPEG n01\n"}, "line 1"),
        ({"val/val_annotations.txt": b"val_0.JPEG\tn01\nval_0.JPEG\tn01\n"}, "repeats"),
        ({"wnids.txt": b"n03\nn01\nn02\nn01\n"}, "distinct"),
        ({"wnids.txt": b"n03\nn01\nn02\nn04\n"}, "n04"),
        ({"train/n01/images/n01_0.JPEG": None}, None),  # fine: one image fewer
    ],
)
def test_tiny_checks(tmp_path, change, expected):
    files = tiny_files()
    for rel, body in change.items():
        if body is None:
            del files[rel]
        else:
            files[rel] = body
    write_tiny(tmp_path, files)
    if expected is None:
        check_tiny(load_tinyimagenet(tmp_path, download=False), skipped={"n01_0"})
        return
    with pytest.raises(DataError) as err:
        load_tinyimagenet(tmp_path, download=False)
    assert expected in one_line(err)


def test_tiny_class_without_readable_images(tmp_path):
    files = tiny_files()
    for i in range(TRAIN_PER_CLASS):
        files[f"train/n01/images/n01_{i}.JPEG"] = b"broken"
    write_tiny(tmp_path, files)
    with pytest.raises(DataError) as err:
        load_tinyimagenet(tmp_path, download=False, warn=lambda m: None)
    assert "1 classes have no readable train image: n01" in one_line(err)


@pytest.mark.parametrize(
    "bad_name", ["../evil.txt", "/tmp/evil.txt", f"{TINYIMAGENET_DIR}/../../evil.txt"]
)
def test_tiny_refuses_unsafe_zip(tmp_path, bad_name):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = data_dir / TINYIMAGENET_ARCHIVE
    make_zip(archive, tiny_files())
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(zipfile.ZipInfo(bad_name), b"evil")
    with pytest.raises(DataError) as err:
        load_tinyimagenet(data_dir, download=False, checksum=None)
    assert "unsafe member" in one_line(err) and repr(bad_name) in one_line(err)
    assert sorted(p.name for p in data_dir.iterdir()) == [TINYIMAGENET_ARCHIVE]  # nothing written
    assert not (tmp_path / "evil.txt").exists()


def test_tiny_bad_archives(tmp_path):
    archive = tmp_path / TINYIMAGENET_ARCHIVE
    archive.write_bytes(os.urandom(3000))
    with pytest.raises(DataError) as err:
        load_tinyimagenet(tmp_path, download=False, checksum=None)
    assert "cannot extract TinyImageNet" in one_line(err)
    files = tiny_files()
    make_zip(archive, files, prefix="other/")
    with pytest.raises(DataError) as err:
        load_tinyimagenet(tmp_path, download=False, checksum=None)
    assert "not the TinyImageNet-200 archive" in one_line(err)
    # A member whose data is damaged (CRC) fails the extraction and leaves no index file.
    make_zip(archive, files)
    body = bytearray(archive.read_bytes())
    at = body.index(b"val_annotations.txt") + len(b"val_annotations.txt")
    body[at + 2 : at + 6] = b"\xff\xff\xff\xff"
    archive.write_bytes(bytes(body))
    with pytest.raises(DataError) as err:
        load_tinyimagenet(tmp_path, download=False, checksum=None)
    assert "cannot extract TinyImageNet" in one_line(err)
    assert not (tmp_path / TINYIMAGENET_DIR / "val" / "val_annotations.txt").exists()
