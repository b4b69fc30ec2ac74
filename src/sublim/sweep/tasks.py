"""The units of work a sweep sends to executors: pure functions of configs, returning values.

Module-level functions so that process pools and Dask can pickle them by name.
"""

from __future__ import annotations

from ..config import ExperimentConfig
from ..engine import load_data, resolve_device
from ..engine.batch import run_group
from ..engine.teacher import TeacherState, train_teacher_stage
from ..records import RunRecord
from .executors import set_torch_threads


def teacher_task(config: ExperimentConfig, threads: int | None = None) -> bytes:
    """Train the teacher of `config`; returns the serialised TeacherState (for the cache)."""
    set_torch_threads(threads)
    state = train_teacher_stage(config, load_data(config), resolve_device(config.device))
    return state.to_bytes()


def runs_task(
    configs: list[ExperimentConfig], teachers: dict[str, bytes], threads: int | None = None
) -> list[RunRecord]:
    """The student stages of one stack of runs, given their trained teachers (by key)."""
    set_torch_threads(threads)
    return run_group(configs, {k: TeacherState.from_bytes(b) for k, b in teachers.items()})
