"""Cell formatting and CSV encoding/decoding, in the reference's text conventions.

Floats get 12 significant digits, NaN is `nan`, booleans are 0/1, lists and dicts are compact
JSON, None is an empty cell. Encoding is pure (bytes in memory) so that the writer can plan a
whole run's changes before it touches any file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ENCODING = "utf-8"


def _plain(value: Any) -> Any:
    """numpy/torch scalars and arrays as Python values (via `.tolist()`), without importing them."""
    if isinstance(value, (str, bytes, bool, int, float)) or value is None:
        return value
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        try:
            return tolist()
        except (TypeError, ValueError):
            return value
    return value


def _json_default(value: Any) -> Any:
    """JSON fallback: array-likes become lists, paths and other objects their string form."""
    plain = _plain(value)
    if plain is not value:
        return plain
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def to_json(value: Any) -> str:
    """Compact single-line JSON (NaN stays `NaN`, as Python's json writes it)."""
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def format_float(value: float) -> str:
    """A float as text: 12 significant digits, `nan`, `inf`, `-inf`."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, ".12g")


def format_value(value: Any) -> str:
    """One CSV cell in the reference conventions (bool before int, since bool is an int)."""
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, (list, tuple, dict)):
        return to_json(value)
    return str(value)


def _csv_text(lines: Iterable[Sequence[str]]) -> str:
    """Rows of already formatted cells as CSV text with `\\n` line ends.

    The writer's terminator is `\\r\\n` so that it quotes cells holding a carriage return
    (it only quotes terminator characters); each row's final `\\r` is then dropped.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    out = []
    for line in lines:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(line)
        out.append(buffer.getvalue()[:-2] + "\n")
    return "".join(out)


def encode_header(columns: Sequence[str]) -> bytes:
    """The header line of a CSV file."""
    return _csv_text([list(columns)]).encode(ENCODING)


def encode_rows(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> bytes:
    """Data lines (no header) for `rows` laid out in `columns`; missing keys are empty cells."""
    return _csv_text([format_value(row.get(c)) for c in columns] for row in rows).encode(ENCODING)


def read_header(path: str | os.PathLike[str]) -> list[str] | None:
    """The header of an existing CSV file, or None when the file is missing or empty."""
    try:
        with open(path, newline="", encoding=ENCODING) as f:
            first = next(csv.reader(f), None)
    except FileNotFoundError:
        return None
    return first if first else None


def read_table(path: str | os.PathLike[str]) -> tuple[list[str], list[list[str]]]:
    """Header and data rows (as text cells) of a CSV file; ([], []) when it is missing or empty."""
    try:
        with open(path, newline="", encoding=ENCODING) as f:
            lines = list(csv.reader(f))
    except FileNotFoundError:
        return [], []
    if not lines:
        return [], []
    return lines[0], lines[1:]


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of text cells (empty list when the file is missing)."""
    header, rows = read_table(path)
    return [dict(zip(header, row, strict=False)) for row in rows]


def widened_columns(existing: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """Existing header in its order, then the wanted columns it lacks, in wanted order."""
    have = set(existing)
    return list(existing) + [c for c in wanted if c not in have]


def rewrite_widened(path: str | os.PathLike[str], columns: Sequence[str]) -> bytes:
    """An existing CSV's full text under a wider header; old rows padded with empty cells."""
    header, rows = read_table(path)
    width = len(columns)
    index = {name: i for i, name in enumerate(header)}
    positions = [index.get(name) for name in columns]
    lines: list[list[str]] = [list(columns)]
    for row in rows:
        if len(row) == len(header):
            lines.append([row[i] if i is not None else "" for i in positions])
        else:  # a malformed line: keep its cells in place rather than drop data
            lines.append(row + [""] * (width - len(row)))
    return _csv_text(lines).encode(ENCODING)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory entry change (create, rename, unlink) durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; nothing more to do there
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace a file's content all at once: temp file beside it, fsync, os.replace, fsync dir."""
    path = Path(path)
    tmp = path.with_name(path.name + ".sublim-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def append_at(path: str | os.PathLike[str], size_before: int, data: bytes) -> None:
    """Truncate a file to `size_before`, then append `data` and fsync: a repeatable append."""
    existed = os.path.exists(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, size_before)
        os.lseek(fd, size_before, os.SEEK_SET)
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if not existed:
        fsync_dir(Path(path).parent)
