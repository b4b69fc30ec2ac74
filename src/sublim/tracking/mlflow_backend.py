"""MLflow: runs written with MlflowClient in batches, to any tracking URI.

The default store is SQLite under the output directory (MLflow 3 refuses the old `./mlruns`
file store without an opt-in); SQLite connections are put in WAL mode with synchronous=NORMAL
(no fsync per transaction: ~50 ms instead of ~130 ms per tracked run). HTTP retries are capped so
that a server that is down costs seconds, not minutes, before the guard warns and turns
tracking off. A KD experiment is one run with a step per epoch; a sweep is an MLflow experiment
named after it, with a parent run and one child run per sublim run.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

MAX_BATCH = 100  # MLflow's log_batch limit on parameters per call (metrics: 1,000)
_PRAGMAS_SET = False


def _sqlite_pragmas() -> None:
    """WAL journal and synchronous=NORMAL on every SQLite connection SQLAlchemy opens here."""
    global _PRAGMAS_SET
    if _PRAGMAS_SET:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def pragmas(conn: Any, _record: Any) -> None:
        if isinstance(conn, sqlite3.Connection):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")  # several KD workers share one store
            cur.close()

    event.listen(Engine, "connect", pragmas)
    _PRAGMAS_SET = True


def client(uri: str) -> Any:
    """An MlflowClient on `uri`, quiet, with few HTTP retries."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient  # configures mlflow's loggers: quiet them after

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if uri.startswith("sqlite:"):
        _sqlite_pragmas()

    return MlflowClient(tracking_uri=uri)


def experiment_id(c: Any, name: str) -> str:
    """The id of MLflow experiment `name`, created if missing (tolerates a racing creator)."""
    found = c.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(c.create_experiment(name))
    except Exception:  # another process created it first
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _log(
    c: Any,
    run_id: str,
    params: Mapping[str, str] = {},
    metrics: Mapping[str, float] = {},
    step: int = 0,
) -> None:
    """Parameters and metrics of one run in as few log_batch calls as MLflow allows."""
    from mlflow.entities import Metric, Param

    ts = int(time.time() * 1000)
    p = [Param(k, v) for k, v in params.items()]
    m = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
    while p or m:
        c.log_batch(run_id, metrics=m[: 1000 - MAX_BATCH], params=p[:MAX_BATCH])
        p, m = p[MAX_BATCH:], m[1000 - MAX_BATCH :]


class MLExperiment:
    """One KD experiment as one MLflow run; `run_id` given: continue that run (a resume)."""

    def __init__(
        self,
        uri: str,
        group: str,
        name: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        run_id: str | None,
    ) -> None:
        self.c = client(uri)
        if run_id is not None:
            self.run_id = run_id
            self.c.update_run(run_id, status="RUNNING")
        else:
            eid = experiment_id(self.c, group)
            run = self.c.create_run(eid, run_name=name, tags=dict(tags))
            self.run_id = run.info.run_id
            _log(self.c, self.run_id, params=params)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """The metrics of one epoch, at step = epoch."""
        _log(self.c, self.run_id, metrics=values, step=step)

    def close(self, status: str) -> None:
        """FINISHED, FAILED or KILLED."""
        self.c.set_terminated(self.run_id, status=status)


class MLRuns:
    """Sweep runs: one child run each under a parent run of the sweep (reused when given)."""

    def __init__(
        self, uri: str, group: str, parent: bool, parent_id: str | None, tags: Mapping[str, str]
    ) -> None:
        self.c = client(uri)
        self.eid = experiment_id(self.c, group)
        self.parent_id = parent_id
        if parent and parent_id is None:
            self.parent_id = self.c.create_run(
                self.eid, run_name=group, tags=dict(tags)
            ).info.run_id
        elif parent_id is not None:
            self.c.update_run(parent_id, status="RUNNING")

    def log_runs(
        self, runs: list[tuple[str, dict[str, str], dict[str, float]]], tags: list[dict[str, str]]
    ) -> None:
        """Create, fill and finish one run per (name, params, metrics)."""
        for (name, params, metrics), t in zip(runs, tags, strict=True):
            if self.parent_id is not None:
                t = {**t, "mlflow.parentRunId": self.parent_id}
            run_id = self.c.create_run(self.eid, run_name=name, tags=t).info.run_id
            _log(self.c, run_id, params=params, metrics=metrics)
            self.c.update_run(run_id, status="FINISHED")

    def close(self) -> None:
        """Finish the parent run."""
        if self.parent_id is not None:
            self.c.set_terminated(self.parent_id, status="FINISHED")
