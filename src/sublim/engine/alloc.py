"""Keep PyTorch's large CPU buffers inside the process: glibc malloc tuning, no env var needed.

PyTorch's CPU convolutions allocate and free hundreds of MB of buffers every training step. By
default glibc serves every block over its mmap threshold (dynamic, at most 32 MiB) with a fresh
`mmap` and unmaps it on `free`, and trims the top of the heap back to the kernel once more than
its trim threshold is free there. A CNN step then touches ~1.5 GB of brand-new pages: about
350,000 minor page faults, each a kernel zero-fill, half the step's time on a 2-core CPU.

`tune_allocator()` raises both thresholds once per process (`mallopt(M_MMAP_THRESHOLD)` and
`mallopt(M_TRIM_THRESHOLD)` through ctypes), so freed buffers stay in the heap and the next step
reuses them: no faults after warm-up. It changes where memory comes from, never a value
computed. `release_free_memory()` returns the free heap between the stages of a run, so that
one stage's leftovers do not add to the next one's peak. It is a no-op on non-glibc platforms (macOS, musl, Windows) and when the user has set
glibc's own `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` (theirs win). The engine calls
it at the start of every run, stack and teacher stage (so sweep workers get it too); `sublim kd`
at the start of every experiment.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap, not from their own mmap
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of free heap instead of returning it every step
FALLBACK_MMAP_THRESHOLD = 32 << 20  # the most that glibc versions with a cap accept

_state: dict[str, bool] = {}


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's mallopt, or None where the C library is not glibc."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        fn = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if the tuning is in effect.

    Idempotent and cheap after the first call. No-op (False) off glibc, after
    `disable_tuning()`, or where the MALLOC_*_THRESHOLD_ environment variables are set.
    """
    if "applied" in _state:
        return _state["applied"]
    applied = False
    user_set = any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))
    fn = None if user_set else _mallopt()
    if fn is not None:
        mmap_ok = bool(fn(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) or bool(
            fn(M_MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD)
        )
        applied = bool(fn(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and mmap_ok
    _state["applied"] = applied
    return applied


def release_free_memory() -> None:
    """Hand the heap's free pages back to the kernel (`malloc_trim(0)`), when tuned.

    Called between the stages of a run (after the evaluations of its initial state, before
    the student's training steps), so that what one stage freed does not stay resident beside
    what the next one allocates (the figure-3 run, before models.convpool: 948 -> 923 MB peak
    RSS).
    """
    if not _state.get("applied"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)


def disable_tuning() -> None:
    """Keep the C library's default thresholds in this process (before/after benchmarks).

    Only effective before the first `tune_allocator()` call of the process.
    """
    _state.setdefault("applied", False)


def tuning_applied() -> bool:
    """Whether `tune_allocator()` has changed this process's allocator settings."""
    return _state.get("applied", False)
