"""One experiment's directory: checkpoints, metrics and status, each written atomically.

    <outdir>/<dataset>/<method or "teacher">/<teacher>_to_<student> or <model>/seed_<s>_<hash>/
        config.json    the KDConfig (and its hash)
        status.json    not_started | in_progress | completed | failed (+ epoch, best/last, error)
        metrics.json   per epoch: train and test loss and accuracy, learning rate
        last.pt        everything needed to resume (model, optimizer, distiller, scaler, RNG
                       states, metric history), rewritten after every epoch
        best.pt        the weights of the best test-accuracy epoch (teachers are read from here)

A killed process leaves at worst the previous epoch's files; the next start resumes from them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import StoreError
from ..store.csvio import atomic_write_bytes
from ..store.lock import DirLock, LockBusy
from .config import KDConfig

STATES = ("not_started", "in_progress", "completed", "failed")


def experiment_dir(config: KDConfig) -> Path:
    """Where `config`'s files live (the hash keeps different recipes apart)."""
    kind = "teacher" if config.role == "teacher" else config.method
    pair = config.model if config.role == "teacher" else f"{config.teacher}_to_{config.model}"
    return (
        Path(config.outdir)
        / config.dataset
        / kind
        / pair
        / f"seed_{config.seed}_{config.config_hash[:8]}"
    )


class Experiment:
    """Reads and writes one experiment's files; holds its lock while training."""

    def __init__(self, config: KDConfig) -> None:
        self.config = config
        self.dir = experiment_dir(config)
        self._lock = DirLock(self.dir)

    def __enter__(self) -> Experiment:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(None)
        except LockBusy as busy:
            raise StoreError(
                f"experiment {self.dir} is being trained by another process ({busy.holder})"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    # ------------------------------------------------------------------ small JSON files
    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        text = json.dumps(data, indent=1, sort_keys=True, default=str) + "\n"
        atomic_write_bytes(self.dir / name, text.encode())

    def status(self) -> dict[str, Any]:
        """The status record ({"status": "not_started"} when there is none)."""
        return self.read_status(self.dir / "status.json")

    @staticmethod
    def read_status(path: Path) -> dict[str, Any]:
        """A status.json's record ({"status": "not_started"} when missing or unreadable)."""
        try:
            return json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError):
            return {"status": "not_started"}

    def write_status(self, status: str, **extra: Any) -> None:
        self._write_json(
            "status.json", {"status": status, "config_hash": self.config.config_hash, **extra}
        )

    def write_config(self) -> None:
        self._write_json(
            "config.json", {"config_hash": self.config.config_hash, **self.config.to_dict()}
        )

    def write_metrics(self, history: dict[str, list[float]]) -> None:
        self._write_json("metrics.json", history)

    # ------------------------------------------------------------------ checkpoints
    def save(self, name: str, state: dict[str, Any]) -> None:
        """torch.save `state` to `name` atomically (temp file, fsync, rename)."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.dir / name, buffer.getvalue())

    def load(self, name: str) -> dict[str, Any] | None:
        """A checkpoint of this experiment (None when absent)."""
        path = self.dir / name
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)
