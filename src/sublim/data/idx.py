"""IDX file format (MNIST and relatives): read plain or gzip files into tensors, and write them.

Format: two zero bytes, a dtype code, the number of dims, then one big-endian uint32 per dim,
then the values in big-endian row-major order.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from sublim.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}

_FIX = "delete it so it is downloaded again, or replace it with a good copy (see --data-dir)"


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"--data-dir: cannot read {path}: {e.strerror or e}") from e
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"--data-dir: {path} is a truncated or corrupt gzip file ({e}); {_FIX}"
        ) from e


def parse_idx(data: bytes, source: str = "<bytes>") -> torch.Tensor:
    """Decode IDX bytes into a tensor of native byte order, checking the header and the size."""

    def bad(what: str) -> DataError:
        return DataError(f"--data-dir: {source} is not a valid IDX file ({what}); {_FIX}")

    if len(data) < 4:
        raise bad(f"only {len(data)} bytes")
    if data[0] != 0 or data[1] != 0:
        raise bad(f"bad magic number 0x{data[:4].hex()}")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise bad(f"unknown dtype code 0x{code:02x}")
    if ndim < 1:
        raise bad("zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise bad(f"header cut short: {len(data)} bytes, {ndim} dims need {header}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    count = int(np.prod(dims, dtype=np.int64))
    expected = count * dtype.itemsize
    if len(data) - header != expected:
        raise bad(
            f"dims {'x'.join(map(str, dims))} need {expected} bytes of data, "
            f"found {len(data) - header}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    # astype copies into native byte order and makes the array writable for torch.
    return torch.from_numpy(array.astype(dtype.newbyteorder("=")).reshape(dims))


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file, plain or gzip (detected by magic bytes, not by the name)."""
    path = Path(path)
    return parse_idx(_read_bytes(path), source=str(path))


def write_idx(path: str | Path, values: torch.Tensor | np.ndarray, compress: bool = False) -> Path:
    """Write a tensor as an IDX file (gzip when `compress`); used to build test fixtures."""
    array = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"IDX has no dtype code for {array.dtype}")
    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path
