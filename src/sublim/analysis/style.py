"""Matplotlib setup for figures readable at paper size, and atomic saving in several formats.

Figures are drawn with the Agg backend (no display needed) at fixed sizes in inches with
constrained layout, so a PNG's pixel size is exactly width x height x dpi.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, deterministic

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

FORMATS = ("png", "svg", "pdf")
DPI = 200
PAGE_WIDTH = 7.0  # full width of a two-column paper, in inches

PAPER_RC = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.3,
    "lines.markersize": 3.5,
    "savefig.dpi": DPI,
    "figure.dpi": DPI,
    "svg.hashsalt": "sublim",  # stable SVG ids
    "pdf.compression": 6,
}


def new_figure(width: float, height: float, **subplots: object) -> tuple[Figure, object]:
    """A figure of `width` x `height` inches with paper styling and constrained layout."""
    with plt.rc_context(PAPER_RC):
        fig, axes = plt.subplots(
            figsize=(width, height), layout="constrained", dpi=DPI, squeeze=False, **subplots
        )
    return fig, axes


def paper_style() -> object:
    """Context manager applying the paper rc settings while drawing."""
    return plt.rc_context(PAPER_RC)


F = TypeVar("F", bound=Callable[..., Any])


def styled(fn: F) -> F:
    """Decorator: draw the whole figure under the paper rc settings (fonts, lines, grid)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with paper_style():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def render(fig: Figure, fmt: str) -> bytes:
    """The figure encoded as `fmt` (png, svg or pdf), in memory."""
    buffer = io.BytesIO()
    metadata = {"Software": None} if fmt == "png" else None
    if fmt == "pdf":
        metadata = {"CreationDate": None, "Producer": "sublim"}
    if fmt == "svg":
        metadata = {"Date": None}
    with paper_style():
        fig.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save(fig: Figure, stem: Path, formats: Sequence[str]) -> dict[str, bytes]:
    """Write `stem.<fmt>` for each format; return the encoded bytes by format."""
    out: dict[str, bytes] = {}
    for fmt in formats:
        data = render(fig, fmt)
        write_atomic(stem.with_name(f"{stem.name}.{fmt}"), data)
        out[fmt] = data
    return out


def close(fig: Figure) -> None:
    """Release a figure's memory (pyplot keeps a reference otherwise)."""
    plt.close(fig)
