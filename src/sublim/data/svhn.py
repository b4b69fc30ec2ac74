"""SVHN cropped digits (`train_32x32.mat`, `test_32x32.mat`, `extra_32x32.mat`) as uint8 tensors.

The files are MATLAB level-5 MAT files, read by the small strict reader below (no scipy). They are
looked up in `<data-dir>/svhn/`, then `<data-dir>/`, verified against their published digests and
downloaded into `<data-dir>` when missing and allowed. SVHN writes digit 0 as label 10; it is
mapped back to 0, so labels are the digits 0..9.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from sublim.data.cifar import _FIX, _find
from sublim.data.download import Failure, obtain_file, why_missing
from sublim.errors import DataError

SVHN_URLS = ("http://ufldl.stanford.edu/housenumbers/",)  # mirror folders; file names appended
SVHN_TRAIN, SVHN_TEST, SVHN_EXTRA = "train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"
SVHN_MD5: Mapping[str, str] = {
    SVHN_TRAIN: "md5:e26dedcc434d2e4c54c9b2d4a06d8373",
    SVHN_TEST: "md5:eb5a983be6a315427106f1b164d9cef3",
    SVHN_EXTRA: "md5:a93ce644f1a588dc4d68dda5feec44a7",
}
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)
SVHN_CLASSES = 10
SVHN_DIR = "svhn"

# ---------------------------------------------------------------- MAT v5 reader

MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED, MI_UTF8 = 1, 5, 6, 14, 15, 16
# Numeric data element types (miINT8 ... miUINT64) and numeric array classes (mxDOUBLE ...).
_MI_DTYPES = {
    1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"
}  # fmt: skip
_MX_DTYPES = {
    6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"
}  # fmt: skip
_MX_KINDS = {
    1: "cell",
    2: "struct",
    3: "object",
    4: "char",
    5: "sparse",
    16: "function",
    17: "opaque",
}
_COMPLEX_FLAG = 0x0800
_CHUNK = 1 << 24
_MAX_RATIO = 1100  # zlib cannot expand data by more than ~1032x; a larger claim is a lie


class _MatError(Exception):
    """A structural problem; read_mat5 turns it into a DataError naming the file."""


def _element(buf: memoryview, pos: int, order: str) -> tuple[int, memoryview, int]:
    """(type, data, next position) of the data element at pos, in either tag form.

    The small form packs type (low 16 bits) and size (high 16 bits) into 4 bytes and keeps up to
    4 data bytes in the next 4; the normal form is type, size, data padded to 8 bytes.
    """
    if pos + 8 > len(buf):
        raise _MatError("a matrix ends inside a data element tag")
    first, second = struct.unpack_from(order + "II", buf, pos)
    if first >> 16:
        mtype, nbytes = first & 0xFFFF, first >> 16
        if nbytes > 4:
            raise _MatError(f"a small data element claims {nbytes} bytes (at most 4)")
        return mtype, buf[pos + 4 : pos + 4 + nbytes], pos + 8
    end = pos + 8 + second
    padded = end + (-second % 8)
    if padded > len(buf):
        raise _MatError(f"a data element of {second} bytes runs past the end of its matrix")
    return first, buf[pos + 8 : end], padded


def _matrix(body: memoryview, order: str) -> tuple[str, np.ndarray]:
    """(name, array) of a numeric miMATRIX whose sub-elements are `body`; Fortran-ordered view."""
    flags_type, flags, pos = _element(body, 0, order)
    if flags_type != MI_UINT32 or len(flags) != 8:
        raise _MatError("a matrix does not start with its array flags")
    (word,) = struct.unpack_from(order + "I", flags)
    mx_class = word & 0xFF
    dims_type, dims_data, pos = _element(body, pos, order)
    if dims_type not in (MI_INT32, MI_UINT32) or len(dims_data) < 8 or len(dims_data) % 4:
        raise _MatError("a matrix has no valid dimensions (int32, at least 2)")
    dims = tuple(int(d) for d in np.frombuffer(dims_data, order + "i4"))  # some writers: uint32
    name_type, name_data, pos = _element(body, pos, order)
    try:
        name = bytes(name_data).decode("utf-8") if name_type in (MI_INT8, MI_UTF8) else None
    except UnicodeDecodeError:
        name = None
    if name is None:
        raise _MatError("a matrix has no valid name")
    if min(dims) < 0:
        raise _MatError(f"variable {name!r} has negative dimensions {dims}")
    if mx_class not in _MX_DTYPES:
        kind = _MX_KINDS.get(mx_class, f"class-{mx_class}")
        raise _MatError(f"variable {name!r} has class {kind}; only numeric arrays are supported")
    if word & _COMPLEX_FLAG:
        raise _MatError(f"variable {name!r} is complex; only real arrays are supported")
    real_type, real_data, pos = _element(body, pos, order)
    if real_type not in _MI_DTYPES:
        raise _MatError(f"variable {name!r} stores its values as type {real_type}, not a number")
    stored = np.dtype(_MI_DTYPES[real_type]).newbyteorder(order)
    count = math.prod(dims)
    if len(real_data) != count * stored.itemsize:
        raise _MatError(
            f"variable {name!r} has {len(real_data)} bytes of {stored.name} for {count} values"
        )
    if pos != len(body):
        raise _MatError(f"variable {name!r} has unexpected data after its values")
    values = np.frombuffer(real_data, stored)
    target = np.dtype(_MX_DTYPES[mx_class])
    if values.dtype != target:  # MATLAB stores e.g. a double array of small integers as uint8
        converted = values.astype(target)
        if not np.array_equal(converted, values):
            raise _MatError(f"variable {name!r} holds values that its class {target} cannot")
        values = converted
    return name, values.reshape(dims, order="F")


def _inflate(f: BinaryIO, nbytes: int, order: str) -> memoryview:
    """Decompress an nbytes miCOMPRESSED element from f; returns its miMATRIX's sub-elements.

    The input is streamed and the output buffer sized from the inner tag, so a large variable is
    held once, and output is bounded at every step, so a lying size cannot exhaust memory.
    """
    d = zlib.decompressobj()
    head = b""
    out: bytearray | None = None
    filled, left, data = 0, nbytes, b""
    while True:
        if not data:
            if not left:
                break
            data = f.read(min(left, _CHUNK))
            if not data:
                raise _MatError("the file ends inside a compressed element")
            left -= len(data)
        limit = 8 - len(head) if out is None else len(out) - filled + 1
        piece = d.decompress(data, limit)
        data = d.unconsumed_tail
        if out is None:
            head += piece
            if len(head) < 8:
                if d.eof:
                    break
                continue
            mtype, size = struct.unpack_from(order + "II", head)
            if mtype != MI_MATRIX:
                raise _MatError(f"a compressed element holds type {mtype}, not a matrix")
            if size > _MAX_RATIO * nbytes:
                raise _MatError(f"a compressed element of {nbytes} bytes claims {size} bytes")
            out, piece = bytearray(size), b""
        if filled + len(piece) > len(out):
            raise _MatError("a compressed element holds more than its matrix tag declares")
        out[filled : filled + len(piece)] = piece
        filled += len(piece)
    if not d.eof or d.unused_data or out is None or filled != len(out):
        raise _MatError("a compressed element is truncated or has trailing bytes")
    return memoryview(out)


def read_mat5(path: Path) -> dict[str, np.ndarray]:
    """The numeric variables of a MATLAB level-5 MAT file, as arrays in MATLAB's shape.

    Handles both byte orders, miCOMPRESSED (zlib) variables and the small data element form;
    refuses anything else (cells, structs, chars, sparse or complex arrays, HDF5 v7.3 files) with
    a DataError naming the file. Arrays are Fortran-ordered views: `a[i, j]` is MATLAB's a(i+1, j+1).
    """
    path = Path(path)
    variables: dict[str, np.ndarray] = {}
    try:
        with open(path, "rb") as f:
            header = f.read(128)
            if header.startswith(b"MATLAB 7.3 MAT-file"):
                raise _MatError("it is a MATLAB 7.3 (HDF5) file, not a level-5 MAT file")
            if len(header) < 128 or not header.startswith(b"MATLAB 5.0 MAT-file"):
                raise _MatError("it does not start with a 'MATLAB 5.0 MAT-file' header")
            order = {b"IM": "<", b"MI": ">"}.get(header[126:128])
            if order is None:
                raise _MatError(f"its endian indicator is {header[126:128]!r}, not b'IM' or b'MI'")
            (version,) = struct.unpack(order + "H", header[124:126])
            if version != 0x0100:
                raise _MatError(f"its version is {version:#06x}, not 0x0100")
            size = os.fstat(f.fileno()).st_size
            while f.tell() < size:
                tag = f.read(8)
                if len(tag) < 8:
                    raise _MatError("the file ends inside a data element tag")
                mtype, nbytes = struct.unpack(order + "II", tag)
                if mtype == MI_COMPRESSED:
                    body = _inflate(f, nbytes, order)
                elif mtype == MI_MATRIX:
                    buffer = bytearray(nbytes)
                    if f.readinto(buffer) != nbytes:
                        raise _MatError("the file ends inside a matrix")
                    f.read(-nbytes % 8)  # alignment padding
                    body = memoryview(buffer)
                else:
                    raise _MatError(f"a top-level data element has type {mtype}, not a matrix")
                name, array = _matrix(body, order)
                if name in variables:
                    raise _MatError(f"variable {name!r} appears twice")
                variables[name] = array
    except OSError as e:
        raise DataError(f"--data-dir: cannot read {path}: {e.strerror or e}") from e
    except (_MatError, zlib.error) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(
            f"--data-dir: {path} is not a MAT file this reader can load ({reason}); {_FIX}"
        ) from e
    return variables


# ---------------------------------------------------------------- SVHN


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 3, 32, 32] (a strided view), digits int64 [N]) of one SVHN file."""
    variables = read_mat5(path)
    x, y = variables.get("X"), variables.get("y")
    if x is None or y is None:
        names = ", ".join(variables) or "none"
        raise DataError(f"--data-dir: {path} has variables {names}, not SVHN's X and y; {_FIX}")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(
            f"--data-dir: {path} has X {x.dtype} {x.shape}, not uint8 (32, 32, 3, N); {_FIX}"
        )
    n = x.shape[3]
    if y.shape not in ((n, 1), (1, n)):
        raise DataError(f"--data-dir: {path} has {n} images but y has shape {y.shape}; {_FIX}")
    labels = y.reshape(-1)
    if n and (not np.all(labels == np.floor(labels)) or labels.min() < 1 or labels.max() > 10):
        raise DataError(f"--data-dir: {path} has labels that are not integers 1..10; {_FIX}")
    # MATLAB's X(h, w, c, n) -> (n, c, h, w); label 10 is digit 0.
    return x.transpose(3, 2, 0, 1), labels.astype(np.int64) % 10


def _join(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy the strided image views into one contiguous tensor; concatenate the labels."""
    x = torch.empty((sum(len(p[0]) for p in parts), 3, 32, 32), dtype=torch.uint8)
    start = 0
    for images, _ in parts:
        x[start : start + len(images)].copy_(torch.from_numpy(images))  # torch copies in parallel
        start += len(images)
    return x, torch.from_numpy(np.concatenate([y for _, y in parts]))


def load_svhn(
    data_dir: Path,
    download: bool = True,
    progress: bool = False,
    extra: bool = False,
    urls: Sequence[str] = SVHN_URLS,
    checksums: Mapping[str, str | Sequence[str] | None] = SVHN_MD5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x uint8 [N,3,32,32], train_y int64 digits 0..9, test_x, test_y).

    `extra` appends the 531131 extra images to train. `urls` are mirror folders (the file name is
    appended) and `checksums` maps file names to digests (None skips the check); tests point them
    at local files.
    """
    data_dir = Path(data_dir).expanduser()
    dirs = [data_dir / SVHN_DIR, data_dir]
    names = [SVHN_TRAIN, SVHN_TEST, *([SVHN_EXTRA] if extra else [])]
    bases = [u if u.endswith("/") else u + "/" for u in urls]
    sources = {name: [base + name for base in bases] for name in names}
    found = {name: _find(dirs, name) for name in names}
    missing = [name for name, path in found.items() if path is None]

    def error(failures: Sequence[Failure] | None) -> DataError:
        fetch = "; ".join(f"{n} from {' or '.join(sources[n])}" for n in missing)
        return DataError(
            f"SVHN: cannot find {', '.join(missing)} in {', '.join(str(d) for d in dirs)}; "
            f"{why_missing(failures)}; fetch {fetch} into --data-dir {data_dir}"
        )

    if missing and not download:
        raise error(None)
    paths = {name: found[name] or data_dir / name for name in names}
    for name in names:
        obtain_file(paths[name], sources[name], checksums.get(name), download, progress, error)
    train_parts = [_read_svhn(paths[SVHN_TRAIN])]
    if extra:
        train_parts.append(_read_svhn(paths[SVHN_EXTRA]))
    train_x, train_y = _join(train_parts)
    del train_parts
    test_x, test_y = _join([_read_svhn(paths[SVHN_TEST])])
    return train_x, train_y, test_x, test_y
