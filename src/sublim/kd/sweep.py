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
    [params.dkd]                   # optional: a method's parameters wherever it runs
    beta = 2.0

Instead of the top-level teacher and student, `[[pairs]]` entries run the grid for several
teacher -> student pairs, each with optional parameters of its own (over `[params]`):

    [[pairs]]
    teacher = "wrn_40_2"
    student = "wrn_16_2"
    params.dkd = { beta = 6.0 }   # mdistiller's value for this pair

A method's parameters are `[params.<method>]`, then the pair's `params.<method>`, then any
`method_params` of base or grid (most specific last).

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
from .config import METHOD_NAMES, KDConfig
from .experiment import Experiment, experiment_dir

TOP_KEYS = (
    "name",
    "description",
    "seeds",
    "teacher",
    "student",
    "pairs",
    "params",
    "base",
    "teacher_recipe",
    "grid",
)
PAIR_KEYS = ("teacher", "student", "params")
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
    pairs = _pairs(data, path)
    params = _method_params(data.get("params", {}), f"{path}: params")
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
    for (t_model, s_model, pair_params), combo, seed in itertools.product(
        pairs, itertools.product(*grid.values()), seed_list
    ):
        point = dict(zip(grid, combo, strict=True))
        fields_ = {**base, **point, "seed": seed, "outdir": outdir}
        method = str(fields_.get("method", "none"))
        given = {**params.get(method, {}), **pair_params.get(method, {})}
        if given and isinstance(fields_.get("method_params", {}), dict):
            fields_["method_params"] = {**given, **fields_.get("method_params", {})}
        at = ", ".join(f"{k}={v}" for k, v in point.items()) or "base"
        if len(pairs) > 1:
            at = f"{t_model} -> {s_model}, {at}"
        where = f"{path} (at {at})"
        student = _build(where, role="student", model=s_model, teacher=t_model, **fields_)
        if student.role == "teacher":  # method none: the student alone, no teacher needed
            teachers.setdefault(student.config_hash, student)
            continue
        recipe = {k: v for k, v in fields_.items() if k not in _STUDENT_ONLY}
        teacher = _build(where, role="teacher", model=t_model, **{**recipe, **teacher_recipe})
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


def _pairs(data: dict[str, Any], path: Path) -> list[tuple[str, str, dict[str, dict[str, Any]]]]:
    """(teacher, student, per-method parameters) of each pair: the top-level teacher and
    student, or every `[[pairs]]` entry (not both)."""
    if "pairs" in data:
        for key in ("teacher", "student"):
            if key in data:
                raise SpecError(f"{path}: {key}: give the models in [[pairs]] or here, not both")
        entries = data["pairs"]
        if not isinstance(entries, list) or not entries:
            raise SpecError(f"{path}: pairs: expected [[pairs]] tables with teacher and student")
    else:
        entries = [{k: data.get(k) for k in ("teacher", "student")}]
    pairs = []
    for i, entry in enumerate(entries):
        where = f"{path}: pairs[{i}]" if "pairs" in data else str(path)
        if not isinstance(entry, dict):
            raise SpecError(f"{where}: expected a table with teacher and student")
        unknown = [k for k in entry if k not in PAIR_KEYS]
        if unknown:
            raise SpecError(f"{where}: {unknown[0]}: unknown key; allowed: {', '.join(PAIR_KEYS)}")
        for key in ("teacher", "student"):
            if not isinstance(entry.get(key), str):
                raise SpecError(f'{where}: {key}: expected a model name, e.g. {key} = "resnet56"')
        own = _method_params(entry.get("params", {}), f"{where}: params")
        pairs.append((entry["teacher"], entry["student"], own))
    return pairs


def _method_params(table: Any, where: str) -> dict[str, dict[str, Any]]:
    """A `params` table: method name -> that method's parameters (checked against the method)."""
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table of methods, e.g. params.dkd = {{ beta = 2.0 }}")
    if not table:
        return {}
    from .losses import METHODS, _parameters  # imports torch: only when a spec has params

    for method, values in table.items():
        if method not in METHOD_NAMES:
            raise SpecError(f"{where}: {method}: not a method; allowed: {', '.join(METHOD_NAMES)}")
        if not isinstance(values, dict):
            raise SpecError(f"{where}.{method}: expected a table of parameters")
        allowed = _parameters(METHODS[method])
        for key in values:
            if key not in allowed:
                raise SpecError(
                    f"{where}.{method}: {key}: not a parameter of {method!r}; allowed: "
                    f"{', '.join(allowed)}"
                )
    return table


_STUDENT_ONLY = ("method", "method_params", "alpha", "init_epochs", "ce_weight")


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
