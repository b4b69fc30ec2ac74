"""What `--track` and a spec's `track = ...` name: a backend and where it writes.

Parsed and checked at the boundary (one line naming --track, exit 2, nothing written): the
kind must be tensorboard or mlflow and its package must be installed (the `tracking` extra).
Nothing here imports a tracking library, so parsing costs nothing when tracking is off.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

KINDS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # kind -> the module it needs
INSTALL = "pip install 'sublim[tracking]'"
ALLOWED = (
    "expected tensorboard:DIR, mlflow (a SQLite store under the output directory) or mlflow:URI"
)


@dataclass(frozen=True)
class TrackTarget:
    """One tracking destination. `location` is TensorBoard's log directory or MLflow's tracking
    URI; None for MLflow means its embedded store, `sqlite:///<outdir>/mlflow.db`."""

    kind: str
    location: str | None = None

    def resolved(self, outdir: str | Path) -> TrackTarget:
        """The target with its location made concrete: MLflow's default store under `outdir`
        and paths made absolute (workers and the report see the same place)."""
        if self.kind == "tensorboard":
            return TrackTarget(self.kind, str(Path(str(self.location)).resolve()))
        if self.location is None:
            db = (Path(outdir) / "mlflow.db").resolve()
            return TrackTarget(self.kind, f"sqlite:///{db}")
        if "://" not in self.location and not self.location.startswith(("file:", "sqlite:")):
            return TrackTarget(self.kind, f"sqlite:///{Path(self.location).resolve()}")
        return self

    def __str__(self) -> str:
        return self.kind if self.location is None else f"{self.kind}:{self.location}"


def parse_target(text: str, where: str = "--track") -> TrackTarget:
    """`tensorboard:DIR`, `mlflow` or `mlflow:URI` (a bare path to an .db file means SQLite)."""
    if not isinstance(text, str):
        raise ConfigError(where, text, ALLOWED)
    kind, sep, location = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ConfigError(where, text, ALLOWED)
    if kind == "tensorboard" and not location.strip():
        raise ConfigError(where, text, "tensorboard needs a log directory: tensorboard:DIR")
    if kind == "mlflow" and sep and not location.strip():
        raise ConfigError(where, text, ALLOWED)
    if importlib.util.find_spec(KINDS[kind]) is None:
        raise ConfigError(where, text, f"{kind} is not installed; {INSTALL}")
    return TrackTarget(kind, location.strip() or None)


def parse_targets(
    values: Iterable[str] | str | None, where: str = "--track"
) -> tuple[TrackTarget, ...]:
    """Every target of a repeatable flag or a spec value (a string or a list of strings),
    without repeats."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    elif not isinstance(values, (list, tuple)):
        raise ConfigError(where, values, ALLOWED + " (or a list of them)")
    out: list[TrackTarget] = []
    for v in values:
        t = parse_target(v, where)
        if t not in out:
            out.append(t)
    return tuple(out)
