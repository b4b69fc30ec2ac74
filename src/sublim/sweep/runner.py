"""Plan and run a sweep: skip finished runs, train each teacher once, write as results arrive.

The driver owns the output directory (one RunStore, locked for the whole sweep). Tasks go to an
executor a few at a time; each finished task is written at once, so a kill loses at most the
tasks in flight and a rerun of the same command finishes the rest without duplicating a row.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tqdm.auto import tqdm

from ..config import ExperimentConfig
from ..engine.batch import plan_stacks, slot_key, stack_key
from ..engine.teacher import teacher_key
from ..engine.train import student_steps
from ..store import RunStore
from .spec import SweepSpec
from .tasks import runs_task, teacher_task

DEFAULT_NOTE_FIELDS = ("seed", "sweep_name", "run_label", "condition", "outdir")


@dataclass
class SweepPlan:
    """What a sweep will do, computed before anything runs."""

    spec: SweepSpec
    outdir: str
    total: int  # runs in the spec (after overrides)
    duplicates: int  # runs whose results-affecting config repeats an earlier run's
    finished: int  # runs already in the output directory
    pending: list[ExperimentConfig]
    groups: dict[str, list[ExperimentConfig]]  # teacher key -> pending runs, in spec order
    cached: set[str]  # teacher keys already trained and cached under outdir

    def summary(self, examples: int = 3) -> list[str]:
        """Lines for `--dry-run` and the sweep's start."""
        n = len(self.pending)
        teachers = len(self.groups)
        to_train = teachers - len(self.cached & set(self.groups))
        lines = [
            f"sweep {self.spec.name} ({self.spec.path}) -> {self.outdir}",
            f"runs: {self.total} in the spec"
            + (f" ({self.duplicates} duplicate configs run once)" if self.duplicates else "")
            + f", {self.finished} already finished, {n} to run",
            f"teachers: {teachers} distinct for these runs, {teachers - to_train} cached, "
            f"{to_train} to train; training each once saves {max(0, n - to_train)} of {n} "
            f"teacher trainings" + (f" ({100 * (n - to_train) / n:.0f} %)" if n else ""),
        ]
        if self.pending:
            stacks = plan_stacks(self.pending)
            trajectories: dict[str, int] = {}
            for c in self.pending:  # runs that cannot stack train alone (no shared trajectory)
                key = slot_key(c) if stack_key(c) is not None else c.config_hash
                n_steps = student_steps(c) * c.student_epochs
                trajectories[key] = max(trajectories.get(key, 0), n_steps)
            steps = sum(student_steps(c) * c.student_epochs for c in self.pending)
            shared = sum(trajectories.values())
            lines.append(
                f"students: {n} runs in {len(stacks)} stacked tasks (up to "
                f"{max(len(s) for s in stacks)} runs each), {len(trajectories)} trajectories; "
                f"shared trajectories train {shared} of {steps} student steps "
                f"({100 * (1 - shared / steps):.0f} % saved)"
            )
        if self.pending and examples:
            lines.append("examples:")
            default = ExperimentConfig().to_dict()
            for c in self.pending[:examples]:
                d = c.to_dict()
                diff = {
                    k: v for k, v in d.items() if v != default[k] and k not in DEFAULT_NOTE_FIELDS
                }
                lines.append(f"  {c.run_label or '-'} seed {c.seed}: {json.dumps(diff)}")
        return lines


def plan_sweep(
    spec: SweepSpec,
    outdir: str,
    store: RunStore,
    overrides: Mapping[str, Any] | None = None,
    seeds: tuple[int, ...] | None = None,
    max_runs: int | None = None,
) -> SweepPlan:
    """Expand and validate every run, then drop the finished ones (by config_hash)."""
    if seeds is not None:
        spec = replace(spec, seeds=seeds)
    configs: list[ExperimentConfig] = []
    seen: set[str] = set()
    total = 0
    for point in spec.points(outdir=outdir, overrides=overrides):
        total += 1
        if point.config.config_hash not in seen:
            seen.add(point.config.config_hash)
            configs.append(point.config)
    done = store.finished_hashes() if store.outdir.exists() else set()
    pending = [c for c in configs if c.config_hash not in done]
    if max_runs is not None:
        pending = pending[:max_runs]
    groups: dict[str, list[ExperimentConfig]] = {}
    for c in pending:
        groups.setdefault(teacher_key(c), []).append(c)
    cached = {k for k in groups if store.teacher_path(k).exists()}
    return SweepPlan(
        spec=spec,
        outdir=outdir,
        total=total,
        duplicates=total - len(configs),
        finished=sum(c.config_hash in done for c in configs),
        pending=pending,
        groups=groups,
        cached=cached,
    )


def execute_sweep(
    plan: SweepPlan,
    store: RunStore,
    executor: Any,
    progress: bool = True,
    tracker: Any = None,
) -> int:
    """Run the plan's pending runs on `executor`, writing each finished task; returns runs written.

    Tasks are teacher trainings and stacks of runs that train together (engine.batch.plan_stacks;
    a stack may span seeds and teachers). A stack is submitted once all its teachers are in the
    cache, with their bytes; teachers are trained in the order the stacks need them. At most
    `2 * workers` tasks are in flight. On KeyboardInterrupt, what has finished is written before
    the interrupt propagates. `tracker` (sublim.tracking.RunsTracker) gets each written task's
    records after the store has them; the caller closes it.
    """
    stacks = [(s, {teacher_key(c) for c in s}) for s in plan_stacks(plan.pending)]
    ready = set(plan.cached)
    waiting = [(s, keys) for s, keys in stacks]
    queue: deque[tuple[str, Any]] = deque()
    queued_teachers: set[str] = set()
    for _, keys in stacks:
        for key in sorted(keys - ready - queued_teachers):
            queued_teachers.add(key)
            queue.append(("teacher", key))

    def release() -> None:
        """Queue (first) every waiting stack whose teachers are all cached now."""
        nonlocal waiting
        now = [(s, keys) for s, keys in waiting if keys <= ready]
        waiting = [(s, keys) for s, keys in waiting if not keys <= ready]
        queue.extendleft(("runs", s) for s, _ in reversed(now))

    release()
    in_flight: dict[Any, tuple[str, Any]] = {}
    written = 0
    start = time.perf_counter()
    bar = tqdm(total=len(plan.pending), desc=plan.spec.name, unit="run", disable=not progress)

    def submit(kind: str, payload: Any) -> None:
        if kind == "teacher":
            group = plan.groups[payload]
            rep = group[0]
            if any(c.diagnostics for c in group):  # record the teacher's curves for them
                rep = rep.replace(diagnostics=True)
            fut = executor.submit(teacher_task, rep, executor.threads)
        else:
            teachers = {k: store.load_teacher(k) for k in {teacher_key(c) for c in payload}}
            fut = executor.submit(runs_task, payload, teachers, executor.threads)
        in_flight[fut] = (kind, payload)

    def handle(fut: Any) -> None:
        nonlocal written
        kind, payload = in_flight.pop(fut)
        result = fut.result()
        if kind == "teacher":
            store.save_teacher(payload, result)
            ready.add(payload)
            release()
            return
        store.write_many(result)
        if tracker is not None:
            tracker.log(result)
        written += len(result)
        bar.update(len(result))
        minutes = (time.perf_counter() - start) / 60
        bar.set_postfix_str(f"{written / minutes:.1f} runs/min")

    try:
        while queue or in_flight:
            while queue and len(in_flight) < 2 * executor.workers:
                submit(*queue.popleft())
            done, _ = executor.wait_any(list(in_flight))
            for fut in done:
                handle(fut)
    except KeyboardInterrupt:
        for fut in [f for f in in_flight if f.done()]:
            try:
                handle(fut)
            except Exception:  # noqa: BLE001 - a failed task has nothing to write
                pass
        raise
    finally:
        bar.close()
    return written
