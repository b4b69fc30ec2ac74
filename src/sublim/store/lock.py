"""Exclusive writer lock on an output directory, so two writers are refused, not interleaved.

`fcntl.flock` on `<outdir>/.sublim.lock`: the OS drops it when the holding process exits or
dies, so a crashed writer never leaves a stale lock. The file also records who holds it
(pid, host, start time) for the refusal message; the file itself stays in place.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".sublim.lock"
POLL_SECONDS = 0.05


class LockBusy(Exception):
    """Another process holds the lock; `holder` describes it for the user."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(holder)


def _holder(fd: int) -> str:
    """Who holds the lock, as written in the lock file by its holder."""
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").split()
    except OSError:
        raw = []
    if len(raw) >= 3:
        return f"pid {raw[0]} on {raw[1]} since {raw[2]}"
    return "pid unknown"


class DirLock:
    """Exclusive flock on `<root>/.sublim.lock`; acquire() creates the file, release() unlocks."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object currently holds the lock."""
        return self._fd is not None

    def acquire(self, wait: float | None = None) -> None:
        """Take the lock; raise LockBusy at once (wait=None) or after `wait` seconds of polling."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if wait is None else time.monotonic() + max(wait, 0.0)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is None or time.monotonic() >= deadline:
                        raise LockBusy(_holder(fd)) from None
                    time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
            started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            info = f"{os.getpid()} {socket.gethostname() or 'unknown-host'} {started}\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode("utf-8"), 0)
        except BaseException:
            os.close(fd)  # closing drops the flock too, if it was taken
            raise
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases the flock)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
