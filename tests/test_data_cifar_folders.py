"""CIFAR-10 pickle batches (layout, archive, download, refusals) and image folders (split, decode)."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import shlex
import socket
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from quiet_http import QuietServer

from sublim.data.cifar import CIFAR10_DIR, load_cifar10
from sublim.data.folders import folder_classes, load_image_folder
from sublim.errors import DataError

PER_BATCH = 20
NAMES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- CIFAR helpers


def fake_batches(seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """name -> (uint8 [PER_BATCH, 3072], labels), random but reproducible."""
    rng = np.random.default_rng(seed)
    return {
        name: (
            rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
            [int(v) for v in rng.integers(0, 10, PER_BATCH)],
        )
        for name in NAMES
    }


def batch_bytes(name: str, data: object, labels: object) -> bytes:
    """A batch in the standard format: protocol-2 pickle of a dict with bytes keys."""
    batch = {
        b"batch_label": name.encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(PER_BATCH)],
    }
    return pickle.dumps(batch, protocol=2)


def write_batches(folder: Path, batches: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        (folder / name).write_bytes(batch_bytes(name, data, labels))


def make_archive(path: Path, members: dict[str, bytes]) -> str:
    """Write a .tar.gz with the given members; return its md5 checksum string."""
    with tarfile.open(path, "w:gz") as tf:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    return "md5:" + hashlib.md5(path.read_bytes()).hexdigest()


def cifar_members(batches: dict) -> dict[str, bytes]:
    members = {f"{CIFAR10_DIR}/{n}": batch_bytes(n, d, lab) for n, (d, lab) in batches.items()}
    members[f"{CIFAR10_DIR}/batches.meta"] = pickle.dumps({b"label_names": []}, protocol=2)
    members[f"{CIFAR10_DIR}/readme.html"] = b"<html></html>"
    return members


def check_loaded(result: tuple, batches: dict) -> None:
    train_x, train_y, test_x, test_y = result
    n_train = 5 * PER_BATCH
    assert train_x.shape == (n_train, 3, 32, 32) and train_x.dtype == torch.uint8
    assert test_x.shape == (PER_BATCH, 3, 32, 32) and test_x.dtype == torch.uint8
    assert train_y.shape == (n_train,) and train_y.dtype == torch.int64
    assert test_y.shape == (PER_BATCH,) and test_y.dtype == torch.int64
    data = np.concatenate([batches[n][0] for n in NAMES[:5]])
    labels = sum((batches[n][1] for n in NAMES[:5]), [])
    assert train_y.tolist() == labels and test_y.tolist() == batches["test_batch"][1]
    for i, c, y, x in [(0, 0, 0, 0), (1, 0, 0, 1), (27, 1, 5, 7), (99, 2, 31, 31), (50, 2, 0, 3)]:
        assert int(train_x[i, c, y, x]) == int(data[i, c * 1024 + y * 32 + x])
    assert torch.equal(train_x.reshape(n_train, -1), torch.from_numpy(data))
    assert torch.equal(test_x.reshape(PER_BATCH, -1), torch.from_numpy(batches["test_batch"][0]))
    assert train_x.is_contiguous() and test_x.is_contiguous()


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


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/cifar-10-python.tar.gz"


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("sub", [CIFAR10_DIR, "."])
def test_cifar_layout_from_batches(tmp_path, sub):
    batches = fake_batches()
    write_batches(tmp_path / sub, batches)
    check_loaded(load_cifar10(tmp_path, download=False, urls=(dead_url(),)), batches)


def test_cifar_download_from_local_server(tmp_path, web):
    folder, base = web
    batches = fake_batches(1)
    digest = make_archive(folder / "cifar-10-python.tar.gz", cifar_members(batches))
    data_dir = tmp_path / "data"
    url = base + "cifar-10-python.tar.gz"
    check_loaded(load_cifar10(data_dir, urls=(url,), checksum=digest), batches)
    assert sorted(p.name for p in data_dir.iterdir()) == [CIFAR10_DIR, "cifar-10-python.tar.gz"]
    assert sorted(p.name for p in (data_dir / CIFAR10_DIR).iterdir()) == sorted(NAMES)
    # The archive alone (batches deleted) is extracted again without any download.
    for name in NAMES[2:]:
        (data_dir / CIFAR10_DIR / name).unlink()
    again = load_cifar10(data_dir, download=False, urls=(dead_url(),), checksum=digest)
    check_loaded(again, batches)
    # An archive already in data_dir is verified against the checksum before use.
    for name in NAMES:
        (data_dir / CIFAR10_DIR / name).unlink()
    with pytest.raises(DataError) as err:
        load_cifar10(data_dir, download=False, checksum="md5:" + "0" * 32)
    assert "fails its checksum" in one_line(err)


def test_cifar_wrong_checksum_and_missing(tmp_path, web):
    folder, base = web
    make_archive(folder / "cifar-10-python.tar.gz", cifar_members(fake_batches()))
    url = base + "cifar-10-python.tar.gz"
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path / "a", urls=(url,), checksum="md5:" + "0" * 32)
    message = one_line(err)
    assert "checksum mismatch" in message and url in message
    assert list((tmp_path / "a").iterdir()) == []  # nothing partial left behind
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path / "b", download=False)
    message = one_line(err)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert "data_batch_1" in message and "test_batch" in message
    assert "downloading is disabled" in message and str(tmp_path / "b") in message


class Payload:
    """Pickles as a call to os.system that would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_cifar_refuses_pickle_with_foreign_global(tmp_path):
    batches = fake_batches()
    folder = tmp_path / CIFAR10_DIR
    write_batches(folder, batches)
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": Payload(marker), b"labels": [0] * PER_BATCH}, protocol=2)
    (folder / "data_batch_3").write_bytes(evil)
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path, download=False)
    message = one_line(err)
    assert str(folder / "data_batch_3") in message and "system" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "data, labels, expected",
    [
        (np.zeros((PER_BATCH, 3072), np.uint8), [10] * PER_BATCH, "outside 0..9"),
        (np.zeros((PER_BATCH, 3072), np.uint8), [0] * (PER_BATCH - 1), "labels"),
        (np.zeros((PER_BATCH, 3072), np.uint8), [0.5] * PER_BATCH, "labels"),
        (np.zeros((PER_BATCH, 1024), np.uint8), [0] * PER_BATCH, "3072"),
        (np.zeros((PER_BATCH, 3072), np.float32), [0] * PER_BATCH, "uint8"),
    ],
)
def test_cifar_bad_batches(tmp_path, data, labels, expected):
    write_batches(tmp_path, fake_batches())
    (tmp_path / "test_batch").write_bytes(batch_bytes("test_batch", data, labels))
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path, download=False)
    message = one_line(err)
    assert expected in message and str(tmp_path / "test_batch") in message


def test_cifar_truncated_pickle(tmp_path):
    write_batches(tmp_path, fake_batches())
    path = tmp_path / "data_batch_1"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path, download=False)
    assert str(path) in one_line(err) and "delete it" in one_line(err)


@pytest.mark.parametrize("bad_name", ["../data_batch_1", "/tmp/data_batch_1", "a/../../x"])
def test_cifar_refuses_unsafe_tar_member(tmp_path, bad_name):
    batches = fake_batches()
    members = cifar_members(batches)
    members[bad_name] = batch_bytes("data_batch_1", *batches["data_batch_1"])
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    make_archive(data_dir / "cifar-10-python.tar.gz", members)
    with pytest.raises(DataError) as err:
        load_cifar10(data_dir, download=False, checksum=None)
    assert "unsafe member" in one_line(err) and repr(bad_name) in one_line(err)
    assert sorted(p.name for p in data_dir.iterdir()) == [CIFAR10_DIR, "cifar-10-python.tar.gz"]
    assert list((data_dir / CIFAR10_DIR).iterdir()) == []  # nothing extracted, no temp files
    assert not (tmp_path / "data_batch_1").exists() and not (tmp_path / "x").exists()


def test_cifar_damaged_or_incomplete_archive(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(os.urandom(4096))
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path, download=False, checksum=None)
    assert "cannot extract" in one_line(err)
    members = cifar_members(fake_batches())
    del members[f"{CIFAR10_DIR}/test_batch"]
    make_archive(archive, members)
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path, download=False, checksum=None)
    assert "has no test_batch" in one_line(err)
    assert list((tmp_path / CIFAR10_DIR).iterdir()) == []


# ---------------------------------------------------------------- image folders

SIZE = 16


def split_position(relative: str) -> float:
    digest = hashlib.blake2b(relative.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def colour(k: int) -> tuple[int, int, int]:
    return 8 + 15 * k, 250 - 13 * k, (77 * k) % 200 + 20  # red alone tells all 16 apart


# (relative path, mode, (width, height)); colour k = index in this list
SPECS = [
    ("cat/a.png", "RGB", (40, 30)),
    ("cat/b.jpg", "RGB", (20, 50)),
    ("cat/c.PNG", "RGBA", (64, 64)),
    ("cat/d.png", "L", (16, 16)),
    ("cat/e.jpeg", "L", (33, 17)),
    ("cat/f.bmp", "RGB", (9, 9)),
    ("cat/nested/g.png", "RGB", (12, 40)),
    ("cat/h.GIF", "P", (25, 25)),
    ("dog/a.png", "RGB", (24, 24)),
    ("dog/b.png", "RGBA", (50, 10)),
    ("dog/c.jpg", "RGB", (32, 32)),
    ("dog/d.png", "L", (8, 64)),
    ("dog/e.png", "RGB", (70, 35)),
    ("dog/f.png", "RGB", (31, 29)),
    ("dog/g.jpg", "RGB", (45, 45)),
    ("dog/h.png", "RGB", (18, 22)),
]


def expected_rgb(k: int) -> tuple[int, int, int]:
    r, g, b = colour(k)
    if SPECS[k][1] == "L":
        return (r, r, r)
    return (r, g, b)


def write_image(root: Path, k: int) -> None:
    relative, mode, wh = SPECS[k]
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    r, g, b = colour(k)
    if mode == "L":
        image = Image.new("L", wh, r)
    elif mode == "RGBA":
        image = Image.new("RGBA", wh, (r, g, b, 255))
    else:
        image = Image.new("RGB", wh, (r, g, b))
        if mode == "P":
            image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    image.save(path)


def make_folder(root: Path, order: list[int]) -> None:
    for k in order:
        write_image(root, k)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "bad.jpg").write_bytes(np.random.default_rng(0).bytes(300))
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(b"")


def identify(images: torch.Tensor) -> list[str]:
    """Map each solid-colour output image back to the spec it was made from."""
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, SIZE, SIZE)
    names = []
    for image in images:
        assert int(image.amax(dim=(1, 2)).sub(image.amin(dim=(1, 2))).max()) <= 4  # solid
        mean = image.float().mean(dim=(1, 2))
        dist = [float((mean - torch.tensor(expected_rgb(k))).abs().max()) for k in range(16)]
        best = int(np.argmin(dist))
        assert dist[best] <= 4
        names.append(SPECS[best][0])
    return names


def test_image_folder_decode_labels_split_and_warning(tmp_path):
    root = tmp_path / "imgs"
    make_folder(root, list(range(len(SPECS))))
    warnings: list[str] = []
    train_x, train_y, test_x, test_y, classes = load_image_folder(
        root, SIZE, test_fraction=0.4, warn=warnings.append
    )
    assert classes == ["cat", "dog"] == folder_classes(root)
    assert train_y.dtype == torch.int64 and test_y.dtype == torch.int64
    readable = sorted(s[0] for s in SPECS)
    want_test = [r for r in readable if split_position(r) < 0.4]
    want_train = [r for r in readable if r not in want_test]
    assert want_test and want_train
    assert identify(train_x) == want_train and identify(test_x) == want_test
    assert train_y.tolist() == [int(r.startswith("dog/")) for r in want_train]
    assert test_y.tolist() == [int(r.startswith("dog/")) for r in want_test]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"skipped 1 unreadable images of {len(SPECS) + 1} under {root}:")
    assert "cat/bad.jpg (" in warnings[0] and "\n" not in warnings[0]
    assert str(root / "cat" / "bad.jpg") not in warnings[0]


def test_image_folder_split_is_stable(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    make_folder(first, list(range(len(SPECS))))
    make_folder(second, list(reversed(range(len(SPECS)))))
    a = load_image_folder(first, SIZE, 0.4, warn=lambda m: None)
    b = load_image_folder(second, SIZE, 0.4, warn=lambda m: None)
    for x, y in zip(a[:4], b[:4], strict=True):
        assert torch.equal(x, y)
    # A new image in another class moves no existing image between train and test.
    (second / "cat" / "zz_new.png").write_bytes((first / "cat" / "a.png").read_bytes())
    c = load_image_folder(second, SIZE, 0.4, warn=lambda m: None)
    new_in_test = split_position("cat/zz_new.png") < 0.4
    assert len(c[2]) == len(a[2]) + new_in_test and len(c[0]) == len(a[0]) + (not new_in_test)
    dogs = lambda x, y: x[y == 1]  # noqa: E731
    assert torch.equal(dogs(c[0], c[1]), dogs(a[0], a[1]))
    assert torch.equal(dogs(c[2], c[3]), dogs(a[2], a[3]))


def test_image_folder_default_warning_and_many_bad(tmp_path, capsys):
    root = tmp_path / "imgs"
    make_folder(root, list(range(len(SPECS))))
    for i in range(7):
        (root / "dog" / f"broken{i}.png").write_bytes(b"\x89PNG not really")
    load_image_folder(root, SIZE, 0.4)
    err = capsys.readouterr().err.strip()
    assert err.startswith("sublim: warning: skipped 8 unreadable images of 24 under")
    assert err.endswith("and 3 more") and len(err.splitlines()) == 1


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan")])
def test_image_folder_test_fraction_range(tmp_path, fraction):
    make_folder(tmp_path, [0, 8])
    with pytest.raises(DataError) as err:
        load_image_folder(tmp_path, SIZE, fraction)
    assert "--test-fraction" in one_line(err)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError) as err:
        load_image_folder(tmp_path, 4)
    assert "--image-size" in one_line(err)
    with pytest.raises(DataError) as err:
        folder_classes(tmp_path / "nope")
    assert "not a directory" in one_line(err)
    write_image(tmp_path, 0)
    (tmp_path / ".git").mkdir()
    with pytest.raises(DataError) as err:
        load_image_folder(tmp_path, SIZE)
    assert "1 class folder(s) (cat)" in one_line(err) and "at least 2" in one_line(err)
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"nope")
    with pytest.raises(DataError) as err:
        load_image_folder(tmp_path, SIZE, warn=lambda m: None)
    assert "'dog' has no readable image" in one_line(err)
    write_image(tmp_path, 8)
    with pytest.raises(DataError) as err:  # 2 images cannot fill both splits at 1e-9
        load_image_folder(tmp_path, SIZE, 1e-9, warn=lambda m: None)
    message = one_line(err)
    assert "test split is empty" in message and "2 readable images" in message
    assert "larger --test-fraction" in message


def test_cifar_numpy1_pickles(tmp_path):
    """The published batches name numpy.core.multiarray (numpy 1), not numpy._core."""
    batches = fake_batches(2)
    write_batches(tmp_path, batches)
    for name in NAMES:
        path = tmp_path / name
        body = path.read_bytes()
        assert b"cnumpy._core.multiarray\n" in body or b"cnumpy.core.multiarray\n" in body
        path.write_bytes(body.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    check_loaded(load_cifar10(tmp_path, download=False), batches)
