"""The two trackers the drivers hold: `RunsTracker` (sublim runs and sweeps) and
`ExperimentTracker` (one KD experiment, epoch by epoch).

Both fan out to the configured backends through a `Guard` each (a failure warns once, never
stops the work). Tracking is not part of any config: it does not change results, so it never
enters a config hash; the CLI builds a `TrackSpec` and hands it to the driver.
Where tracking went is recorded in `<outdir>/tracking.json` (read by `sublim report`); a KD
experiment keeps its run ids in `<experiment>/tracking.json` so that a resume continues them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .guard import Guard
from .targets import TrackTarget
from .values import flat_params, numeric

TRACKING_FILE = "tracking.json"


@dataclass(frozen=True)
class TrackSpec:
    """Where to track (resolved targets) and under which group: the MLflow experiment name and
    TensorBoard's subfolder (the sweep's name). Plain data: it travels to worker processes."""

    targets: tuple[TrackTarget, ...]
    group: str

    @classmethod
    def make(
        cls, targets: Iterable[TrackTarget], outdir: str | Path, group: str
    ) -> TrackSpec | None:
        """None when there is nothing to track."""
        resolved = tuple(t.resolved(outdir) for t in targets)
        return cls(resolved, group) if resolved else None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomically replace `path` (write a temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def describe(target: TrackTarget, group: str) -> dict[str, str]:
    """What the report shows of a target: kind, location, group and how to open it."""
    loc = str(target.location)
    if target.kind == "tensorboard":
        return {
            "kind": "tensorboard",
            "location": loc,
            "group": group,
            "open": f"tensorboard --logdir {loc}",
        }
    local = loc.startswith(("sqlite:", "file:"))
    how = f"mlflow ui --backend-store-uri {loc}" if local else loc
    return {"kind": "mlflow", "location": loc, "group": group, "open": how}


def record_location(outdir: str | Path, spec: TrackSpec, **extra: Any) -> None:
    """Add the spec's targets to `<outdir>/tracking.json` (merged with what is there)."""
    path = Path(outdir) / TRACKING_FILE
    data = read_json(path)
    targets = {t["kind"] + ":" + t["location"]: t for t in data.get("targets", [])}
    for t in spec.targets:
        d = describe(t, spec.group)
        targets[d["kind"] + ":" + d["location"]] = {
            **targets.get(d["kind"] + ":" + d["location"], {}),
            **d,
        }
    data["targets"] = list(targets.values())
    data.update(extra)
    write_json(path, data)


def _run_entry(record: Any) -> tuple[tuple[str, dict[str, str], dict[str, float]], dict[str, str]]:
    """(name, params, metrics) and tags of a RunRecord: its effective config as parameters
    (with the config hash and run id), the numbers of its runs.csv row as metrics."""
    config = dict(record.config.get("effective_config", {}))
    params = flat_params({**config, "config_hash": record.config.get("config_hash", "")})
    seeds = {k for k in record.run if k.endswith("_seed") or k in ("seed", "rng_base")}
    metrics = numeric(record.run, skip=set(config) | seeds)
    label = str(record.run.get("run_label") or config.get("run_label") or "run")
    run_id = str(record.run.get("run_id", ""))
    name = f"{label} seed {record.seed}"
    tags = {
        "sublim.run_id": run_id,
        "sublim.config_hash": str(params["config_hash"]),
        "sublim.seed": str(record.seed),
    }
    return (name if not run_id else f"{name} {run_id[-6:]}", params, metrics), tags


class RunsTracker:
    """One tracked run per sublim run, grouped by sweep; records are buffered and written in
    batches (every `flush_every` runs or `flush_seconds`, and at close) by the driver only.

    MLflow: experiment = the group (sweep name), a parent run for the sweep (reused by a
    rerun of the same sweep: its id is kept in `<outdir>/tracking.json`), a child run per
    sublim run. TensorBoard: `<DIR>/<group>/<run>/` with HParams and final metrics."""

    def __init__(
        self,
        spec: TrackSpec,
        outdir: str | Path,
        parent: bool = True,
        flush_every: int = 256,
        flush_seconds: float = 60.0,
    ) -> None:
        self.spec, self.outdir = spec, Path(outdir)
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self._buffer: list[Any] = []
        self._last = time.monotonic()
        self._backends: list[tuple[Guard, Any]] = []
        parents = read_json(self.outdir / TRACKING_FILE).get("parents", {})
        for t in spec.targets:
            guard = Guard(str(t))
            if t.kind == "tensorboard":
                from .tensorboard_backend import TBRuns

                backend = guard.call(TBRuns, str(t.location), spec.group)
            else:
                from .mlflow_backend import MLRuns

                key = f"{t.location}#{spec.group}"
                backend = guard.call(
                    MLRuns,
                    str(t.location),
                    spec.group,
                    parent,
                    parents.get(key),
                    {"sublim.outdir": str(self.outdir)},
                )
                if backend is not None and backend.parent_id is not None:
                    parents[key] = backend.parent_id
            if backend is not None:
                self._backends.append((guard, backend))
        self._guarded(lambda: record_location(self.outdir, spec, parents=parents))

    def _guarded(self, fn: Any) -> None:
        try:
            fn()
        except OSError as exc:
            Guard(f"{self.outdir / TRACKING_FILE}").fail(exc)

    def log(self, records: Iterable[Any]) -> None:
        """Queue finished runs; write them when the buffer is full or old enough."""
        self._buffer.extend(records)
        if (
            len(self._buffer) >= self.flush_every
            or time.monotonic() - self._last >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        """Write every queued run to every live backend."""
        self._last = time.monotonic()
        if not self._buffer:
            return
        entries = [_run_entry(r) for r in self._buffer]
        self._buffer = []
        runs = [e for e, _ in entries]
        for guard, backend in self._backends:
            if hasattr(backend, "parent_id"):
                guard.call(backend.log_runs, runs, [t for _, t in entries])
            else:
                guard.call(backend.log_runs, runs)

    def close(self) -> None:
        """Flush, then close every backend (MLflow: finish the parent run)."""
        self.flush()
        for guard, backend in self._backends:
            guard.call(backend.close)


class ExperimentTracker:
    """One KD experiment, one tracked run per backend, continued across resumes.

    `<experiment>/tracking.json` maps each target to its MLflow run id or TensorBoard log
    directory and the last epoch logged there; `log_history` logs every epoch after that one
    (so an epoch checkpointed but not yet logged before a kill is logged on resume, and none
    twice)."""

    def __init__(
        self,
        spec: TrackSpec,
        exp_dir: str | Path,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
    ) -> None:
        self.spec, self.dir = spec, Path(exp_dir)
        self.path = self.dir / TRACKING_FILE
        self.state = read_json(self.path)
        self._backends: list[tuple[str, Guard, Any]] = []
        flat = flat_params(params)
        for t in spec.targets:
            key, guard = str(t), Guard(str(t))
            known = self.state.get(key, {})
            last = int(known.get("last_step", 0))
            if t.kind == "tensorboard":
                from .tensorboard_backend import TBExperiment

                rel = known.get("logdir") or str(Path(str(t.location)) / spec.group / name)
                backend = guard.call(TBExperiment, rel, last, flat, spec.group)
                entry = {"logdir": rel}
            else:
                from .mlflow_backend import MLExperiment

                backend = guard.call(
                    MLExperiment, str(t.location), spec.group, name, flat, tags, known.get("run_id")
                )
                entry = {} if backend is None else {"run_id": backend.run_id}
            if backend is not None:
                self.state[key] = {**known, **entry, "last_step": last}
                self._backends.append((key, guard, backend))
        self._save()

    def _save(self) -> None:
        try:
            write_json(self.path, self.state)
        except OSError as exc:
            for _, guard, _ in self._backends:
                guard.fail(exc)

    def log_history(self, history: Mapping[str, list[Any]]) -> None:
        """Log the epochs of `history` (kd.train's per-epoch lists) not logged yet."""
        epochs = list(history.get("epoch", []))
        wrote = False
        for key, guard, backend in self._backends:
            if guard.failed:
                continue
            last = int(self.state[key].get("last_step", 0))
            for i, epoch in enumerate(epochs):
                if int(epoch) <= last:
                    continue
                values = epoch_values(history, i)
                if guard.call(backend.log, int(epoch), values) is None and guard.failed:
                    break
                self.state[key]["last_step"] = int(epoch)
                wrote = True
        if wrote:
            self._save()

    def close(self, status: str) -> None:
        """End every run: FINISHED, FAILED or KILLED."""
        for _, guard, backend in self._backends:
            if hasattr(backend, "run_id"):
                guard.call(backend.close, status)
            else:
                guard.call(backend.close, status == "FINISHED")


EPOCH_NAMES = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "test_loss": "test/loss",
    "test_acc": "test/acc",
    "lr": "lr",
}


def epoch_values(history: Mapping[str, list[Any]], i: int) -> dict[str, float]:
    """Epoch `i`'s metrics: train/test loss and accuracy, lr, and each named loss term
    (`history["terms"][i]`, a name -> mean mapping) as `loss/<name>`."""
    out = {}
    for key, tag in EPOCH_NAMES.items():
        values = history.get(key, [])
        if i < len(values) and values[i] is not None:
            out[tag] = float(values[i])
    terms = history.get("terms", [])
    if i < len(terms) and isinstance(terms[i], dict):
        out.update({f"loss/{k}": float(v) for k, v in terms[i].items()})
    return out
