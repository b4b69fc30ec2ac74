"""IDX reader: round trips, byte-level layout, gzip detection and damaged files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from sublim.data.idx import read_idx, write_idx
from sublim.errors import DataError


def _images(n: int = 5, h: int = 4, w: int = 3) -> torch.Tensor:
    return torch.arange(n * h * w, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, h, w)


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_uint8_images_and_labels(tmp_path, compress):
    images = _images()
    labels = torch.tensor([3, 0, 9, 255, 1], dtype=torch.uint8)
    write_idx(tmp_path / "img", images, compress=compress)
    write_idx(tmp_path / "lbl", labels, compress=compress)
    got_images, got_labels = read_idx(tmp_path / "img"), read_idx(tmp_path / "lbl")
    assert got_images.dtype == torch.uint8 and got_images.shape == (5, 4, 3)
    assert torch.equal(got_images, images)
    assert torch.equal(got_labels, labels)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip_other_dtypes(tmp_path, dtype):
    values = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype) * 3
    write_idx(tmp_path / "x.gz", values, compress=True)
    got = read_idx(tmp_path / "x.gz")
    assert got.numpy().dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.numpy(), values)


def test_hand_written_big_endian_file(tmp_path):
    # magic 0x00000B02: int16, 2 dims; dims 2x2; big-endian values.
    payload = struct.pack(">BBBBII4h", 0, 0, 0x0B, 2, 2, 2, 1, -2, 300, -30000)
    (tmp_path / "f").write_bytes(payload)
    assert read_idx(tmp_path / "f").tolist() == [[1, -2], [300, -30000]]


def test_gzip_detected_by_magic_bytes_not_name(tmp_path):
    images = _images()
    write_idx(tmp_path / "looks-plain", images, compress=True)
    write_idx(tmp_path / "looks-compressed.gz", images, compress=False)
    assert torch.equal(read_idx(tmp_path / "looks-plain"), images)
    assert torch.equal(read_idx(tmp_path / "looks-compressed.gz"), images)


def _assert_one_line_naming(err: pytest.ExceptionInfo, name: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert name in message and "--data-dir" in message


def test_truncated_plain_file(tmp_path):
    path = write_idx(tmp_path / "short-idx3", _images())
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError) as err:
        read_idx(path)
    _assert_one_line_naming(err, "short-idx3")
    assert "need 60 bytes" in str(err.value)


def test_trailing_bytes_rejected(tmp_path):
    path = write_idx(tmp_path / "long-idx1", torch.zeros(4, dtype=torch.uint8))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="found 5"):
        read_idx(path)


def test_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "cut.gz", _images(50), compress=True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError) as err:
        read_idx(path)
    _assert_one_line_naming(err, "cut.gz")
    assert "gzip" in str(err.value)


def test_corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress(bytes(range(256)) * 40))
    for i in range(20, 40):
        data[i] ^= 0xFF
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        read_idx(path)
    _assert_one_line_naming(err, "bad.gz")
    assert "corrupt gzip" in str(err.value)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "only 0 bytes"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x00", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x00", "unknown dtype code 0x07"),
        (b"\x00\x00\x08\x00", "zero dimensions"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "header cut short"),
    ],
)
def test_bad_headers(tmp_path, content, why):
    path = tmp_path / "bad-header"
    path.write_bytes(content)
    with pytest.raises(DataError, match=why) as err:
        read_idx(path)
    _assert_one_line_naming(err, "bad-header")


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "nope")
    _assert_one_line_naming(err, "nope")
