"""Write-ahead journal: a run's changes to several files land all together or not at all.

A transaction is a list of planned file changes, each either an append (`size_before`, bytes)
or a whole-file replacement (bytes). The list is first written atomically to the journal,
then applied, then the journal is deleted. Applying is repeatable (an append first truncates
the file back to `size_before`), so after a crash at any instant the journal is simply applied
again. Without a journal on disk no file has been touched by the transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .csvio import ENCODING, append_at, atomic_write_bytes

JOURNAL_NAME = ".sublim.journal"
JOURNAL_VERSION = 1


class JournalError(Exception):
    """The journal cannot be read or no longer matches the files it describes."""


@dataclass(frozen=True)
class Change:
    """One planned change to one file; `path` is relative to the output directory."""

    path: str
    op: Literal["append", "replace"]
    data: bytes
    size_before: int = 0


def journal_path(root: Path) -> Path:
    """Where the journal of the output directory `root` lives."""
    return root / JOURNAL_NAME


def _encode(changes: list[Change]) -> bytes:
    """Journal file content (JSON; the payloads are UTF-8 text, so they are stored as strings)."""
    payload = {
        "version": JOURNAL_VERSION,
        "changes": [
            {
                "path": c.path,
                "op": c.op,
                "size_before": c.size_before,
                "data": c.data.decode(ENCODING, "surrogateescape"),
            }
            for c in changes
        ],
    }
    return json.dumps(payload).encode(ENCODING)


def _decode(raw: bytes) -> list[Change]:
    """Changes stored in a journal file."""
    try:
        payload = json.loads(raw.decode(ENCODING))
        if payload.get("version") != JOURNAL_VERSION:
            raise JournalError(f"unknown journal version {payload.get('version')!r}")
        return [
            Change(
                path=c["path"],
                op=c["op"],
                size_before=int(c["size_before"]),
                data=c["data"].encode(ENCODING, "surrogateescape"),
            )
            for c in payload["changes"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise JournalError(f"unreadable journal ({exc})") from exc


def _target(root: Path, change: Change) -> Path:
    """Absolute path of a change's file, refusing paths that leave the output directory."""
    rel = Path(change.path)
    if rel.is_absolute() or ".." in rel.parts or change.op not in ("append", "replace"):
        raise JournalError(f"invalid journal entry {change.op} {change.path!r}")
    return root / rel


def apply(root: Path, changes: list[Change]) -> None:
    """Apply planned changes in order; safe to repeat after a crash part-way through."""
    for change in changes:
        target = _target(root, change)
        target.parent.mkdir(parents=True, exist_ok=True)
        if change.op == "replace":
            atomic_write_bytes(target, change.data)
            continue
        size = target.stat().st_size if target.exists() else 0
        if size < change.size_before:
            raise JournalError(
                f"{change.path} is shorter ({size} bytes) than the journal expects "
                f"({change.size_before} bytes)"
            )
        append_at(target, change.size_before, change.data)


def commit(root: Path, changes: list[Change]) -> None:
    """Journal the changes durably, apply them, then drop the journal."""
    if not changes:
        return
    path = journal_path(root)
    atomic_write_bytes(path, _encode(changes))
    apply(root, changes)
    path.unlink()


def recover(root: Path) -> bool:
    """Finish a transaction interrupted by a crash, if any; True when one was replayed."""
    path = journal_path(root)
    tmp = path.with_name(path.name + ".sublim-tmp")
    if tmp.exists():  # a journal that never became visible: its transaction never started
        tmp.unlink()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return False
    apply(root, _decode(raw))
    path.unlink()
    return True
