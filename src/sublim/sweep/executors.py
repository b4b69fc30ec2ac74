"""Where sweep tasks run: inline, a local process pool, or a Dask cluster.

Every executor has the same small surface: `submit(fn, *args)` returns a future,
`wait_any(futures)` returns (done, not_done), `close()`. Workers only compute and return
values; the driver alone writes files.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ConfigError

EXECUTORS = "inline, processes:N, dask-local:N, dask:tcp://HOST:PORT"


def set_torch_threads(n: int | None) -> None:
    """Give each worker its share of the cores (oversubscribed BLAS threads spin and crawl)."""
    if n:
        import torch

        torch.set_num_threads(n)


class InlineExecutor:
    """Runs each task in the calling process when it is submitted."""

    workers = 1
    threads: int | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args))
        except Exception as exc:  # KeyboardInterrupt propagates to the driver
            fut.set_exception(exc)
        return fut

    def wait_any(self, futures: Iterable[Any]) -> tuple[set[Any], set[Any]]:
        futures = set(futures)
        return {f for f in futures if f.done()}, {f for f in futures if not f.done()}

    def close(self) -> None:
        pass


class ProcessExecutor:
    """A pool of N spawned worker processes on this machine, each with cores/N torch threads."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._pool = cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=set_torch_threads,
            initargs=(self.threads,),
        )

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        return self._pool.submit(fn, *args)

    def wait_any(self, futures: Iterable[Any]) -> tuple[set[Any], set[Any]]:
        done, pending = cf.wait(set(futures), return_when=cf.FIRST_COMPLETED)
        return set(done), set(pending)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """A Dask cluster: a LocalCluster of N single-threaded worker processes, or a scheduler."""

    def __init__(self, address: str | None = None, workers: int = 1) -> None:
        from dask.distributed import Client, LocalCluster

        self._cluster = None
        if address is None:
            self._cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
            self.client = Client(self._cluster)
            self.threads: int | None = max(1, (os.cpu_count() or 1) // workers)
            self.client.run(set_torch_threads, self.threads)
        else:
            self.client = Client(address, timeout="30s")
            self.threads = None  # remote workers keep their own settings
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})) or workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def wait_any(self, futures: Iterable[Any]) -> tuple[set[Any], set[Any]]:
        from dask.distributed import wait

        done, pending = wait(list(futures), return_when="FIRST_COMPLETED")
        return set(done), set(pending)

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def check_executor(text: str) -> tuple[str, str]:
    """Validate `--executor` without starting anything; returns (kind, argument)."""
    kind, _, arg = text.strip().partition(":")
    if kind == "inline" and not arg:
        return kind, arg
    if kind in ("processes", "dask-local"):
        if not arg.isdigit() or int(arg) < 1:
            raise ConfigError(
                "--executor", text, f"expected a worker count >= 1; allowed: {EXECUTORS}"
            )
        return kind, arg
    if kind == "dask" and arg.startswith("tcp://"):
        return kind, arg
    raise ConfigError("--executor", text, f"allowed: {EXECUTORS}")


def make_executor(text: str) -> InlineExecutor | ProcessExecutor | DaskExecutor:
    """Start the executor `--executor` names."""
    kind, arg = check_executor(text)
    if kind == "inline":
        return InlineExecutor()
    if kind == "processes":
        return ProcessExecutor(int(arg))
    if kind == "dask-local":
        return DaskExecutor(None, int(arg))
    try:
        return DaskExecutor(arg)
    except OSError as exc:
        raise ConfigError("--executor", text, f"cannot reach the Dask scheduler ({exc})") from None
