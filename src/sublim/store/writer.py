"""The only writer of result files: per-seed CSV/JSONL files and the optional global aggregates.

One `RunStore` owns an output directory while it is open (an exclusive lock), and each
`write()` is one journalled transaction across all the files a run touches, so a run's rows
appear completely or not at all, even if the process is killed at any instant. A journal left
by a killed writer is replayed by the next `open()`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import StoreError
from ..records import RunRecord
from . import journal
from .csvio import (
    atomic_write_bytes,
    encode_header,
    encode_rows,
    read_header,
    rewrite_widened,
    to_json,
    widened_columns,
)
from .lock import DirLock, LockBusy
from .schema import (
    LAYER_METRICS_COLUMNS,
    PERTURBATION_COLUMNS,
    RUNS_COLUMNS,
    SCHEMA_VERSION,
    SHARED_RUN_KEYS,
    ordered_columns,
)

RUNS_FILE = "runs.csv"
LAYER_METRICS_FILE = "layer_metrics.csv"
PERTURBATIONS_FILE = "perturbations.csv"
CONFIGS_FILE = "configs.jsonl"
GLOBAL_RUNS_FILE = "runs_all_seeds.csv"
GLOBAL_LAYER_METRICS_FILE = "layer_metrics_all_seeds.csv"
GLOBAL_PERTURBATIONS_FILE = "perturbations_all_seeds.csv"
TEACHERS_DIR = "teachers"
MODELS_DIR = "models"

Row = dict[str, Any]


def seed_dir_name(seed: int) -> str:
    """Per-seed directory name, as the reference writes it: `seed_000042`."""
    return f"seed_{int(seed):06d}"


def _reason(exc: OSError) -> str:
    """Short one-line reason for an OS error."""
    return exc.strerror or str(exc).splitlines()[0]


def check_writable(outdir: str | os.PathLike[str]) -> None:
    """Fail fast, creating nothing, when `outdir` could not be created or written as a directory."""
    path = Path(outdir)
    fix = "pass a writable directory or another --outdir"
    try:
        if path.exists():
            if not path.is_dir():
                raise StoreError(f"--outdir {path}: exists and is not a directory; {fix}")
            if not os.access(path, os.W_OK | os.X_OK):
                raise StoreError(f"--outdir {path}: directory is not writable; {fix}")
            return
        if os.path.lexists(path):
            raise StoreError(f"--outdir {path}: is a broken symbolic link; {fix}")
        ancestor = path.absolute().parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise StoreError(f"--outdir {path}: {ancestor} is not a directory; {fix}")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise StoreError(f"--outdir {path}: cannot create it in {ancestor}; {fix}")
    except OSError as exc:
        raise StoreError(f"--outdir {path}: cannot check it ({_reason(exc)}); {fix}") from exc


class RunStore:
    """Crash-safe, single-writer appender of run records under one output directory."""

    def __init__(self, outdir: str | os.PathLike[str], append_global: bool = False) -> None:
        """Remember where to write; nothing touches the disk until open()."""
        self.outdir = Path(outdir)
        self.append_global = append_global
        self._lock = DirLock(self.outdir)
        self.recovered = False  # whether open() finished a write interrupted by a crash

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether this store holds the directory lock and accepts writes."""
        return self._lock.held

    def open(self, wait: float | None = None) -> RunStore:
        """Create the directory, take the lock (refuse, or poll `wait` s), replay any journal."""
        if self.is_open:
            return self
        try:
            self.outdir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(wait)
        except LockBusy as busy:
            waited = "" if wait is None else f" after waiting {wait:g}s"
            raise StoreError(
                f"output directory {self.outdir} is in use by another sublim writer "
                f"({busy.holder}){waited}; wait for it to finish or use another --outdir"
            ) from None
        except OSError as exc:
            raise self._os_error("open", exc) from exc
        try:
            self.recovered = self._recover()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Release the writer lock (idempotent)."""
        self._lock.release()

    def __enter__(self) -> RunStore:
        """Open (without waiting) unless already open."""
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release the lock."""
        self.close()

    # -- writing -------------------------------------------------------------------------

    def write(self, record: RunRecord) -> None:
        """Append one run to every file it belongs in, all or nothing."""
        self.write_many([record])

    def write_many(self, records: Iterable[RunRecord]) -> None:
        """Append several runs as one transaction (fewer fsyncs; still all or nothing)."""
        if not self.is_open:
            raise RuntimeError("RunStore.write called before open() or after close()")
        records = list(records)
        if not records:
            return
        try:
            changes = self._plan(records)  # reads only; a failure here leaves no trace
        except OSError as exc:
            raise self._os_error("read", exc) from exc
        try:  # checkpoints first: once a run's rows exist, its files do too
            for record in records:
                self._write_artifacts(record)
        except OSError as exc:
            raise self._os_error("write to", exc) from exc
        try:
            journal.commit(self.outdir, changes)
        except BaseException as exc:
            # Stopped part-way: stop accepting writes; the next open() replays the journal,
            # so the run ends up complete (callers must not write it again in this process).
            self.close()
            if isinstance(exc, OSError):
                raise self._os_error("write to", exc) from exc
            if isinstance(exc, journal.JournalError):
                raise self._journal_error(exc) from exc
            raise

    # -- resume and caches ---------------------------------------------------------------

    def finished_hashes(self) -> set[str]:
        """config_hash of every run already in the per-seed runs.csv files (for resuming)."""
        done: set[str] = set()
        for path in sorted(self.outdir.glob(f"seed_*/{RUNS_FILE}")):
            try:
                with open(path, newline="", encoding="utf-8") as f:
                    reader = csv.reader(f)
                    header = next(reader, [])
                    if "config_hash" not in header:
                        continue
                    col = header.index("config_hash")
                    done.update(row[col] for row in reader if len(row) == len(header))
            except (OSError, UnicodeDecodeError) as exc:
                raise self._bad_file(path, f"cannot be read ({exc})") from None
        return done

    def teacher_path(self, key: str) -> Path:
        """Where the cached teacher `key` lives: `<outdir>/teachers/<key>.pt`."""
        return self.outdir / TEACHERS_DIR / f"{key}.pt"

    def load_teacher(self, key: str) -> bytes | None:
        """The cached teacher's bytes, or None when it is not cached."""
        try:
            return self.teacher_path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._os_error("read", exc) from exc

    def save_teacher(self, key: str, data: bytes) -> None:
        """Cache a trained teacher (atomically: a reader sees all of it or nothing)."""
        if not self.is_open:
            raise RuntimeError("RunStore.save_teacher called before open() or after close()")
        path = self.teacher_path(key)
        try:
            path.parent.mkdir(exist_ok=True)
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise self._os_error("write to", exc) from exc

    # -- internals -----------------------------------------------------------------------

    def _write_artifacts(self, record: RunRecord) -> None:
        """A run's extra files (checkpoints, diagnostics), each atomically, in its seed dir."""
        folder = self.outdir / seed_dir_name(record.seed)
        for rel, data in record.artifacts.items():
            path = folder / rel
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                raise ValueError(f"artifact path {rel!r} leaves the seed directory")
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)

    def _os_error(self, action: str, exc: OSError) -> StoreError:
        """One-line StoreError for an OS failure on the output directory."""
        where = exc.filename if exc.filename else self.outdir
        return StoreError(
            f"--outdir {self.outdir}: cannot {action} {where} ({_reason(exc)}); "
            "check permissions and free space, or use another --outdir"
        )

    def _bad_file(self, path: Path, problem: str) -> StoreError:
        """One-line StoreError for an existing result file the store cannot extend."""
        return StoreError(f"--outdir {self.outdir}: {path} {problem}; move it away and rerun")

    def _journal_error(self, exc: Exception) -> StoreError:
        """One-line StoreError for a journal that cannot be applied."""
        path = journal.journal_path(self.outdir)
        return StoreError(
            f"--outdir {self.outdir}: cannot finish the write recorded in {path} ({exc}); "
            f"inspect the result files, remove {path}, then rerun"
        )

    def _recover(self) -> bool:
        """Replay a journal left by an interrupted write; True when there was one."""
        try:
            return journal.recover(self.outdir)
        except journal.JournalError as exc:
            raise self._journal_error(exc) from exc
        except OSError as exc:
            raise self._os_error("recover an interrupted write in", exc) from exc

    def _plan(self, records: list[RunRecord]) -> list[journal.Change]:
        """Every file change the records need, computed before any file is touched."""
        tables: dict[str, tuple[list[str], list[Row]]] = {}
        lines: dict[str, list[bytes]] = {}

        def add(rel: str, base: list[str], rows: list[Row]) -> None:
            tables.setdefault(rel, (base, []))[1].extend(rows)

        for record in records:
            run, metrics, perturbations, config = _complete_rows(record)
            seed_dir = seed_dir_name(record.seed)
            add(f"{seed_dir}/{RUNS_FILE}", RUNS_COLUMNS, [run])
            add(f"{seed_dir}/{LAYER_METRICS_FILE}", LAYER_METRICS_COLUMNS, metrics)
            add(f"{seed_dir}/{PERTURBATIONS_FILE}", PERTURBATION_COLUMNS, perturbations)
            lines.setdefault(f"{seed_dir}/{CONFIGS_FILE}", []).append(
                (to_json(config) + "\n").encode("utf-8")
            )
            if self.append_global:
                add(GLOBAL_RUNS_FILE, RUNS_COLUMNS, [run])
                add(GLOBAL_LAYER_METRICS_FILE, LAYER_METRICS_COLUMNS, metrics)
                add(GLOBAL_PERTURBATIONS_FILE, PERTURBATION_COLUMNS, perturbations)

        changes = [
            change
            for rel, (base, rows) in tables.items()
            if (change := self._plan_csv(rel, base, rows)) is not None
        ]
        for rel, chunks in lines.items():
            size = self._size(rel)
            data = b"".join(chunks)
            changes.append(journal.Change(rel, "append", self._newline_fix(rel, size) + data, size))
        return changes

    def _size(self, rel: str) -> int:
        """Current size of a file in the output directory (0 when missing)."""
        try:
            return (self.outdir / rel).stat().st_size
        except FileNotFoundError:
            return 0

    def _newline_fix(self, rel: str, size: int) -> bytes:
        """b"\\n" if a non-empty file lacks its final newline (hand-edited), so lines stay whole."""
        if size == 0:
            return b""
        with open(self.outdir / rel, "rb") as f:
            f.seek(size - 1)
            return b"" if f.read(1) == b"\n" else b"\n"

    def _plan_csv(self, rel: str, base: list[str], rows: list[Row]) -> journal.Change | None:
        """The change one CSV file needs: create with header, append, or rewrite wider."""
        path = self.outdir / rel
        size = self._size(rel)
        wanted = ordered_columns(base, rows)
        try:
            header = read_header(path) if size else None
        except UnicodeDecodeError:
            raise self._bad_file(path, "is not a UTF-8 CSV file") from None
        if size and not header:
            raise self._bad_file(path, "has no CSV header")
        if header is None:
            return journal.Change(rel, "append", encode_header(wanted) + encode_rows(wanted, rows))
        if not rows:
            return None
        present = {key for row in rows for key in row}
        columns = widened_columns(header, [c for c in wanted if c in present])
        if len(columns) > len(header):
            try:
                old = rewrite_widened(path, columns)
            except UnicodeDecodeError:
                raise self._bad_file(path, "is not a UTF-8 CSV file") from None
            return journal.Change(rel, "replace", old + encode_rows(columns, rows))
        data = self._newline_fix(rel, size) + encode_rows(header, rows)
        return journal.Change(rel, "append", data, size)


def _complete_rows(record: RunRecord) -> tuple[Row, list[Row], list[Row], Row]:
    """The record's rows with schema_version set and the run's keys copied into child rows."""
    run: Row = dict(record.run)
    if "run_id" not in run:
        raise ValueError("RunRecord.run has no 'run_id'; the store needs it to identify the run")
    run.setdefault("schema_version", SCHEMA_VERSION)
    run.setdefault("seed", record.seed)
    shared = {key: run[key] for key in SHARED_RUN_KEYS if key in run}
    metrics = [{**shared, **row} for row in record.layer_metrics]
    perturbations = [{**shared, **row} for row in record.perturbations]
    head = {key: run[key] for key in ("schema_version", "run_id", "timestamp") if key in run}
    config = {**head, **dict(record.config)}
    return run, metrics, perturbations, config
