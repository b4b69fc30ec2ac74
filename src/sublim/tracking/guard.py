"""Tracking never stops or loses an experiment: a backend that fails warns once and goes quiet.

A server that is down, a full disk or a broken store raise inside the backend; the guard turns
the first failure into one line on stderr and disables that backend for the rest of the process
(no retry storms, no second warning). The results on disk are written by the store either way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Guard:
    """Calls into one backend; after its first exception, warns once and skips every call."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.failed = False

    def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T | None:
        """`fn(*args, **kw)`, or None (warned once) when it raises or the backend has failed."""
        if self.failed:
            return None
        try:
            return fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - any tracking failure must not stop the run
            self.fail(exc)
            return None

    def fail(self, exc: BaseException) -> None:
        """Disable the backend with one line on stderr."""
        if self.failed:
            return
        self.failed = True
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        sys.stderr.write(
            f"sublim: warning: tracking to {self.label} failed ({type(exc).__name__}: {text}); "
            "results are still written, tracking there is off for this process\n"
        )
        sys.stderr.flush()
