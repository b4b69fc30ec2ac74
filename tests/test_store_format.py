"""Cell formatting and CSV encoding follow the reference conventions (REFERENCE.md)."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from sublim.store import encode_header, encode_rows, format_value, read_header, read_rows


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1 + 0.2, "0.3"),
        (1 / 3, "0.333333333333"),
        (123456789.123456789, "123456789.123"),
        (2.0, "2"),
        (1e-20, "1e-20"),
        (-1.5e300, "-1.5e+300"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
        (True, "1"),
        (False, "0"),
        (7, "7"),
        (None, ""),
        ([256, 256], "[256,256]"),
        ((1, 2), "[1,2]"),
        ({"fc1": "A", "aux_head": True}, '{"fc1":"A","aux_head":true}'),
        ([{"std": 0.5}], '[{"std":0.5}]'),
        ("cpu", "cpu"),
    ],
)
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text


def test_format_numpy_values_without_the_store_importing_numpy() -> None:
    assert format_value(np.float32(0.1)) == "0.10000000149"
    assert format_value(np.float64(1 / 3)) == "0.333333333333"
    assert format_value(np.int64(5)) == "5"
    assert format_value(np.bool_(True)) == "1"
    assert format_value(np.float64("nan")) == "nan"
    assert format_value(np.array([1, 2, 3])) == "[1,2,3]"
    assert format_value(np.array(2.5)) == "2.5"


def test_twelve_significant_digits_round_trip_closely() -> None:
    x = math.pi * 1e5
    assert abs(float(format_value(x)) - x) / x < 1e-11
    assert len(format_value(x).replace(".", "")) == 12


def test_encode_rows_lays_out_columns_and_quotes() -> None:
    columns = ["a", "b", "c"]
    rows = [{"a": 1, "c": 'x,"y"\nz'}, {"b": [1, 2], "a": None}]
    data = encode_header(columns) + encode_rows(columns, rows)
    assert data.endswith(b"\n") and b"\r" not in data
    parsed = list(csv.reader(io.StringIO(data.decode())))
    assert parsed == [columns, ["1", "", 'x,"y"\nz'], ["", "[1,2]", ""]]


def test_read_header_and_rows(tmp_path) -> None:
    path = tmp_path / "t.csv"
    assert read_header(path) is None
    path.write_bytes(b"")
    assert read_header(path) is None
    path.write_bytes(encode_header(["x", "y"]) + encode_rows(["x", "y"], [{"x": 1.5, "y": True}]))
    assert read_header(path) == ["x", "y"]
    assert read_rows(path) == [{"x": "1.5", "y": "1"}]
