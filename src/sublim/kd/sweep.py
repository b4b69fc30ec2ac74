"""`sublim kd sweep SPEC`: datasets x methods x seeds, students after their teachers.

A spec (TOML):

    name = "beta"
    seeds = "0..2"
    teacher = "resnet110"          # the teacher model of every student
    student = "resnet56"
    [base]                         # recipe fields for teachers and students (KDConfig names)
    epochs = 150
    [teacher_recipe]               # optional: what differs for the teacher trainings
    [grid]                         # any student field; every combination is one experiment
    dataset = ["cifar100", "cifar10"]
    method = ["none", "kd", "at"]

One teacher experiment per (dataset, teacher, seed, recipe) is trained first; a student is
submitted when its teacher has completed, and reads that teacher's best.pt. Completed
experiments are skipped and interrupted ones resume, so rerunning the command finishes a sweep.
Tasks run on the same executors as `sublim sweep`; each worker writes only its experiment's
directory (under that directory's lock).
"""

from __future__ import annotations

import itertools
import sys
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..sweep.spec import SpecError, parse_seeds, read_toml
from .config import KDConfig
from .experiment import Experiment, experiment_dir

TOP_KEYS = ("name", "description", "seeds", "teacher", "student", "base", "teacher_recipe", "grid")
OWNED = ("role", "seed", "outdir", "teacher_checkpoint_path", "model", "teacher")
FIELDS = tuple(f.name for f in fields(KDConfig))


@dataclass
class KDPlan:
    """Every experiment of a sweep: trainings without a teacher (the teachers, and students
    alone for method none) first, then the distillations; with what is already done."""

    name: str
    teachers: list[KDConfig]
    students: list[KDConfig]
    done: set[str]  # config hashes of completed experiments

    def summary(self) -> str:
        t_done = sum(c.config_hash in self.done for c in self.teachers)
        s_done = sum(c.config_hash in self.done for c in self.students)
        return (
            f"kd sweep {self.name}: {len(self.teachers)} trainings without a teacher ({t_done} "
            f"done), {len(self.students)} distillations ({s_done} done)"
        )


def _check(table: dict[str, Any], where: str) -> None:
    for key in table:
        if key in OWNED:
            raise SpecError(
                f"{where}: {key}: set by the sweep (seeds, --outdir, the top-level teacher and "
                "student keys), not here"
            )
        if key not in FIELDS:
            raise SpecError(f"{where}: {key}: unknown field; allowed: {', '.join(FIELDS)}")


def load_plan(path: str | Path, outdir: str, seeds: str | None = None) -> KDPlan:
    """Read and validate a spec; every experiment is built (validated) before anything runs."""
    path = Path(path)
    data = read_toml(path)
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise SpecError(f"{path}: {unknown[0]}: unknown key; allowed: {', '.join(TOP_KEYS)}")
    for key in ("teacher", "student"):
        if not isinstance(data.get(key), str):
            raise SpecError(f'{path}: {key}: expected a model name, e.g. {key} = "resnet56"')
    base, teacher_recipe, grid = (dict(data.get(k, {})) for k in ("base", "teacher_recipe", "grid"))
    _check(base, f"{path}: base")
    _check(teacher_recipe, f"{path}: teacher_recipe")
    for key in teacher_recipe:
        if key in _STUDENT_ONLY:
            raise SpecError(f"{path}: teacher_recipe: {key}: a teacher is trained without it")
    _check(grid, f"{path}: grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"{path}: grid.{key}: expected a non-empty list")
    seed_list = parse_seeds(seeds if seeds is not None else data.get("seeds", 0), f"{path}: seeds")
    teachers: dict[str, KDConfig] = {}
    students: dict[str, KDConfig] = {}
    for combo in itertools.product(*grid.values()):
        point = dict(zip(grid, combo, strict=True))
        for seed in seed_list:
            fields_ = {**base, **point, "seed": seed, "outdir": outdir}
            where = f"{path} (at {', '.join(f'{k}={v}' for k, v in point.items()) or 'base'})"
            student = _build(
                where, role="student", model=data["student"], teacher=data["teacher"], **fields_
            )
            if student.role == "teacher":  # method none: the student alone, no teacher needed
                teachers.setdefault(student.config_hash, student)
                continue
            recipe = {k: v for k, v in fields_.items() if k not in _STUDENT_ONLY}
            teacher = _build(
                where, role="teacher", model=data["teacher"], **{**recipe, **teacher_recipe}
            )
            teachers.setdefault(teacher.config_hash, teacher)
            ck = str(experiment_dir(teacher) / "best.pt")
            student = student.replace(teacher_checkpoint_path=ck, teacher_hash=teacher.config_hash)
            students.setdefault(student.config_hash, student)
    done = {
        h
        for h, c in {**teachers, **students}.items()
        if Experiment(c).status().get("status") == "completed"
    }
    return KDPlan(
        str(data.get("name", path.stem)), list(teachers.values()), list(students.values()), done
    )


_STUDENT_ONLY = ("method", "method_params", "alpha", "init_epochs")


def _build(where: str, **kw: Any) -> KDConfig:
    if isinstance(kw.get("milestones"), list):
        kw["milestones"] = tuple(kw["milestones"])
    if isinstance(kw.get("method_params"), dict):
        from .losses import explicit_params

        kw["method_params"] = explicit_params(str(kw.get("method")), kw["method_params"])
    try:
        return KDConfig(**kw)
    except UserError as exc:
        raise SpecError(f"{where}: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:  # a value of the wrong type
        raise SpecError(f"{where}: {' '.join(str(exc).split())}") from None


def kd_task(config: KDConfig, threads: int | None = None) -> dict[str, Any]:
    """Run one experiment in a worker; returns its final status (errors as a status)."""
    from ..sweep.executors import set_torch_threads
    from .runner import run_experiment

    set_torch_threads(threads)
    try:
        return run_experiment(config)
    except Exception as exc:  # noqa: BLE001 (reported by the driver; the sweep goes on)
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
        try:  # failures before training started (data, lock) also reach status.json
            exp = Experiment(config)
            if exp.status().get("status") != "failed":
                exp.dir.mkdir(parents=True, exist_ok=True)
                exp.write_status("failed", error=error)
        except OSError:
            pass
        return {"status": "failed", "error": error}


def execute(plan: KDPlan, executor: Any, quiet: bool = False) -> int:
    """Teachers first, each student when its teacher has completed; returns failures."""
    teacher_of = {s.config_hash: str(s.teacher_hash) for s in plan.students}
    ready = {t.config_hash for t in plan.teachers if t.config_hash in plan.done}
    failed: set[str] = set()
    queue: deque[KDConfig] = deque(t for t in plan.teachers if t.config_hash not in plan.done)
    waiting = [s for s in plan.students if s.config_hash not in plan.done]
    in_flight: dict[Any, KDConfig] = {}
    failures = 0

    def release() -> None:
        nonlocal waiting
        now = [s for s in waiting if teacher_of[s.config_hash] in ready]
        for s in [s for s in waiting if teacher_of[s.config_hash] in failed]:
            _say(quiet, f"skipped (its teacher failed): {experiment_dir(s)}")
        waiting = [s for s in waiting if teacher_of[s.config_hash] not in ready | failed]
        queue.extend(now)

    release()
    limit = 2 * max(1, getattr(executor, "workers", 1))
    while queue or in_flight:
        while queue and len(in_flight) < limit:
            config = queue.popleft()
            in_flight[executor.submit(kd_task, config, executor.threads)] = config
        done, _ = executor.wait_any(list(in_flight))
        for fut in done:
            config = in_flight.pop(fut)
            try:
                status = fut.result()
            except Exception as exc:  # noqa: BLE001 (a lost worker: that experiment failed)
                status = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            if status.get("status") == "completed":
                _say(quiet, f"completed: {experiment_dir(config)} best {status['best_acc']:.4f}")
                if config.role == "teacher":
                    ready.add(config.config_hash)
            else:
                failures += 1
                failed.add(config.config_hash)
                _say(False, f"failed: {experiment_dir(config)}: {status.get('error')}")
        release()
    return failures


def _say(quiet: bool, line: str) -> None:
    if not quiet:
        print(line, file=sys.stderr, flush=True)
