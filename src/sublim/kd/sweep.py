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
    [[pairs]]
    teacher = "resnet32x4"
    student = "shufflev2"
    recipe = { lr = 0.01 }        # the pair's student fields (RepDistiller: 0.01 for ShuffleNets)

A pair's `recipe` applies to its student and to that student trained alone, never to the
teacher. `skip = ["fsp"]` leaves methods (or named conditions) of the grid out for that pair,
as a paper's table marks them N/A.

A method's parameters are `[params.<method>]`, then the pair's `params.<method>`, then any
`method_params` of base, grid or condition (most specific last).

Named conditions are one more axis, `condition`, each a bundle of student fields (a method, its
parameters, a recipe change; `preset` too, for the student only: teachers follow the top-level
preset); the name is the experiment's `label` in reports:

    [conditions.ours]
    method = "fkd"
    method_params = { separate_head = true, teacher_layers = "@ours" }

`preset = "kd-wo-ce-50e"` (top level, or in a condition) applies a recipe preset under every
experiment's explicit fields (its learning rate depends on the model and on whether it
distils). Layer lists that depend on the teacher and dataset are named in `[layers.<model>]`
and referred to as "@name" in `teacher_layers` / `student_layers`:

    [layers.resnet34]
    ours = { cifar10 = [12, 13, 14, 15], tinyimagenet = [12, 13, 14, 15] }
    standard = [3, 7, 13, 16]

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

from ..errors import StoreError, UserError
from ..sweep.spec import SpecError, parse_seeds, read_toml, spec_track
from .autolayers import resolve_planned, resolve_ready
from .config import METHOD_NAMES, STUDENT_FIELDS, KDConfig
from .experiment import Experiment, experiment_dir

# The top-level keys of a spec and what each means (the documentation's reference is made
# from this table; a key missing here is refused).
TOP_KEY_HELP: dict[str, str] = {
    "name": "the sweep's name",
    "description": "free text describing the sweep, for its readers",
    "seeds": 'the seeds: "0..2" (inclusive), "0,3,5", a list, or one int (that seed alone)',
    "teacher": "the teacher model of every student (or use [[pairs]])",
    "student": "the student model (or use [[pairs]])",
    "pairs": "[[pairs]] entries: teacher, student, optional params.<method>, a recipe table of "
    "student fields of their own (e.g. RepDistiller's lr 0.01 for ShuffleNet students) and "
    "skip, the grid's methods the pair does not run (N/A in a paper's table)",
    "params": "[params.<method>]: a method's parameters wherever it runs",
    "base": "KDConfig fields for teachers and students alike",
    "teacher_recipe": "KDConfig fields that differ for the teacher trainings",
    "grid": "student fields with lists of values; every combination is one experiment",
    "conditions": "named bundles of student fields, [conditions.<name>]: one more axis, "
    "condition, whose name is the experiment's label in reports",
    "preset": "a recipe preset (e.g. kd-wo-ce-50e) under every experiment's explicit fields",
    "layers": '[layers.<model>]: named layer lists, referred to as "@name" in '
    "teacher_layers / student_layers, optionally per dataset",
    "track": "tracking targets as for --track (tensorboard:DIR, mlflow, mlflow:URI)",
    "reference_behaviour": "as --reference-behaviour, for the whole sweep (as if in [base])",
    "teacher_seed": "as --teacher-seed, for the whole sweep (as if in [base])",
}
TOP_KEYS = tuple(TOP_KEY_HELP)
TOP_FIELDS = ("reference_behaviour", "teacher_seed")
PAIR_KEYS = ("teacher", "student", "params", "recipe", "skip")
LAYER_KEYS = ("teacher_layers", "student_layers")  # may be "@name" lists of [layers.MODEL]
OWNED = (
    *("role", "seed", "outdir", "teacher_checkpoint_path", "model", "teacher"),
    "teacher_layers_requested",
)
FIELDS = tuple(f.name for f in fields(KDConfig))


# Achieved rate of KD training steps on the 2-core reference CPU (benchmarks/kd_wo_ce.py on an
# idle machine, channels-last: 150-167 GFLOP/s for resnet9 / resnet34 steps at batch 128; about
# a third of that while other jobs share it), used for --dry-run's estimate.
CPU_GFLOPS = 150.0
# Achieved rate assumed for one GPU on these small networks (CIFAR ResNets at batch 64 are
# launch-bound far below a GPU's peak): about 10 TFLOP/s, what RepDistiller's few-hour
# resnet32x4 -> resnet8x4 runs imply on a V100-class card. An assumption until
# benchmarks/gpu_check.sh has measured a GPU; `--gpu-tflops` replaces it.
GPU_TFLOPS = 10.0
TRAIN_IMAGES = {
    "cifar10": 50_000,
    "cifar100": 50_000,
    "svhn": 73_257,
    "tinyimagenet": 100_000,
    "mnist": 60_000,
    "fashion-mnist": 60_000,
    "kmnist": 60_000,
    "imagenet": 1_281_167,  # ILSVRC2012
}
TEST_IMAGES = {"svhn": 26_032, "imagenet": 50_000}  # 10,000 for the others
_FORWARD_FLOPS: dict[tuple[str, int, int], float] = {}


def forward_flops(model: str, num_classes: int, image_size: int) -> float:
    """Floating-point operations of one image's forward pass in training mode, counted on a
    zero-weight CPU model (`kd.train.blank_model`; attention as plain matmuls, so it is counted)."""
    key = (model, num_classes, image_size)
    if key not in _FORWARD_FLOPS:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        from .train import blank_model, one_thread

        net = blank_model(model, num_classes, image_size).train()  # no inference fast paths
        x = torch.zeros(1, 3, image_size, image_size)
        with FlopCounterMode(display=False) as counter, torch.no_grad(), one_thread():
            with sdpa_kernel(SDPBackend.MATH):
                net(x)
        _FORWARD_FLOPS[key] = float(counter.get_total_flops())
    return _FORWARD_FLOPS[key]


def experiment_flops(config: KDConfig) -> float:
    """Approximate operations of a whole experiment: the student's training steps (forward and
    backward, about 3 forwards), the teacher's forwards, and the per-epoch evaluations (the
    method's own small modules are left out)."""
    size, k = config.input_shape[1], config.num_classes
    student = forward_flops(config.model, k, size)
    teacher = forward_flops(config.teacher, k, size) if config.role == "student" else 0.0
    train = config.train_limit or TRAIN_IMAGES.get(config.dataset, 50_000)
    test = config.test_limit or TEST_IMAGES.get(config.dataset, 10_000)
    epochs = config.epochs + config.init_stage
    return epochs * (train * (3 * student + teacher) + test * student)


@dataclass
class KDPlan:
    """Every experiment of a sweep: trainings without a teacher (the teachers, and students
    alone for method none) first, then the distillations; with what is already done."""

    name: str
    teachers: list[KDConfig]
    students: list[KDConfig]
    done: set[str]  # config hashes of completed experiments
    track: tuple[str, ...] = ()  # tracking targets (sublim.tracking), not part of any config

    def summary(self) -> str:
        t_done = sum(c.config_hash in self.done for c in self.teachers)
        s_done = sum(c.config_hash in self.done for c in self.students)
        return (
            f"kd sweep {self.name}: {len(self.teachers)} trainings without a teacher ({t_done} "
            f"done), {len(self.students)} distillations ({s_done} done)"
        )

    def estimate(self, gflops: float = CPU_GFLOPS, gpu_tflops: float = GPU_TFLOPS) -> str:
        """The remaining work in floating-point operations and hours on the reference CPU at
        `gflops` GFLOP/s and on one GPU at `gpu_tflops` TFLOP/s (three lines, each under 100
        columns)."""
        todo = [c for c in (*self.teachers, *self.students) if c.config_hash not in self.done]
        flops = sum(experiment_flops(c) for c in todo)
        return (
            f"remaining: {len(todo)} experiments, {flops / 1e15:.1f} PFLOP: about "
            f"{_hours(flops / (gflops * 1e9) / 3600)} CPU h, "
            f"{_hours(flops / (gpu_tflops * 1e12) / 3600)} GPU h\n"
            f"(CPU: {gflops:g} GFLOP/s, the 2-core reference CPU's rate in benchmarks/kd_wo_ce.py; "
            f"GPU: {gpu_tflops:g} TFLOP/s\nachieved by one GPU on these small networks, an "
            "assumption: --gpu-tflops sets yours)"
        )

    def rows(self, gflops: float = CPU_GFLOPS, gpu_tflops: float = GPU_TFLOPS) -> list[PlanRow]:
        """What will run, by dataset x pair x condition: teachers on rows of their own, then each
        teacher -> student pair with its conditions (a student alone, method none, on the first
        pair of that student), in the spec's order; hours of the remaining work at `gflops`
        (CPU) and `gpu_tflops` (one GPU)."""
        teachers = {s.teacher_hash for s in self.students}
        everything = (*self.teachers, *self.students)
        datasets = _ranks(c.dataset for c in everything)
        conditions = _ranks(_condition(c) for c in everything)
        pairs = _ranks((str(c.teacher), c.model) for c in self.students)
        models = _ranks(c.model for c in self.teachers if c.config_hash in teachers)
        by_student = {model: rank for (_, model), rank in reversed(list(pairs.items()))}
        groups: dict[tuple[Any, ...], list[KDConfig]] = {}
        for c in everything:  # key: the order (dataset, section, pair, condition), then the text
            cond = _condition(c)
            if c.config_hash in teachers:
                key = (
                    datasets[c.dataset],
                    0,
                    models[c.model],
                    0,
                    0,
                    f"teacher {c.model}",
                    "teacher",
                )
            elif c.role == "teacher":  # a student alone, shown with the first pair it is in
                rank = by_student.get(c.model, len(pairs))
                key = (datasets[c.dataset], 1, rank, conditions[cond], 0, f"{c.model} alone", cond)
            else:
                rank = pairs[(str(c.teacher), c.model)]
                pair = f"{c.teacher} -> {c.model}"
                key = (datasets[c.dataset], 1, rank, conditions[cond], 1, pair, cond)
            groups.setdefault(key, []).append(c)
        out = []
        for key in sorted(groups):
            configs = groups[key]
            todo = [c for c in configs if c.config_hash not in self.done]
            flops = sum(experiment_flops(c) for c in todo)
            out.append(
                PlanRow(
                    configs[0].dataset,
                    key[5],
                    key[6],
                    len(configs),
                    len(configs) - len(todo),
                    flops / (gflops * 1e9) / 3600,
                    flops / (gpu_tflops * 1e12) / 3600,
                )
            )
        return out

    def table(
        self, gflops: float = CPU_GFLOPS, gpu_tflops: float = GPU_TFLOPS, width: int = 100
    ) -> str:
        """`rows` as a text table that fits `width` columns (long names are shortened), with a
        total line."""
        head = ("dataset", "teacher -> student", "condition", "runs", "done", "left")
        head += ("CPU h", "GPU h")
        rows = self.rows(gflops, gpu_tflops)
        body = [
            (r.dataset, r.pair, r.condition, r.runs, r.done, r.runs - r.done)
            + (_hours(r.hours), _hours(r.gpu_hours))
            for r in rows
        ]
        if len(rows) > 1:
            runs, done = sum(r.runs for r in rows), sum(r.done for r in rows)
            cpu, gpu = sum(r.hours for r in rows), sum(r.gpu_hours for r in rows)
            body.append(("total", "", "", runs, done, runs - done, _hours(cpu), _hours(gpu)))
        cells = [tuple(map(str, row)) for row in (head, *body)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
        spare = width - 1 - sum(widths) - 2 * (len(head) - 1)
        for i in (1, 2):  # the name columns give way, down to a readable minimum
            if spare < 0:
                cut = min(-spare, widths[i] - 12)
                if cut > 0:
                    widths[i] -= cut
                    spare += cut
        lines = []
        for row in cells:
            parts = [
                _fit(v, w).ljust(w) if i < 3 else v.rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(parts).rstrip())
        return "\n".join(lines)


@dataclass(frozen=True)
class PlanRow:
    """One row of a plan's table: experiments of one dataset, pair and condition."""

    dataset: str
    pair: str  # "teacher MODEL", "TEACHER -> STUDENT" or "STUDENT alone"
    condition: str  # the spec's condition name (the config's label), else the method
    runs: int
    done: int
    hours: float  # the remaining ones' estimate on the reference CPU
    gpu_hours: float = 0.0  # and on one GPU (GPU_TFLOPS)


def _condition(config: KDConfig) -> str:
    return config.label or config.method


def _ranks(items: Any) -> dict[Any, int]:
    """Each distinct item's rank of first appearance."""
    out: dict[Any, int] = {}
    for item in items:
        out.setdefault(item, len(out))
    return out


def _hours(hours: float) -> str:
    return f"{hours:.2f}" if hours < 1 else f"{hours:,.1f}" if hours < 100 else f"{hours:,.0f}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


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
    conditions = _conditions(data.get("conditions", {}), path)
    layers = _layer_lists(data.get("layers", {}), path)
    top_preset = data.get("preset")
    base, teacher_recipe, grid = (dict(data.get(k, {})) for k in ("base", "teacher_recipe", "grid"))
    for key in TOP_FIELDS:
        if key in data:
            if key in base:
                raise SpecError(f"{path}: {key}: give it at the top or in [base], not both")
            base[key] = data[key]
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
    combos = itertools.product(pairs, conditions, itertools.product(*grid.values()), seed_list)
    for pair, (c_name, cond), combo, seed in combos:
        t_model, s_model, pair_params, pair_recipe, skip = pair
        point = dict(zip(grid, combo, strict=True))
        cond = dict(cond)
        preset = cond.pop("preset", top_preset)
        shared = {**base, **point, **cond, "seed": seed, "outdir": outdir}
        # the pair's recipe is the student's (and its training alone), never its teacher's
        fields_ = {**base, **pair_recipe, **point, **cond, "seed": seed, "outdir": outdir}
        method = str(fields_.get("method", "none"))
        if method in skip or (c_name is not None and c_name in skip):
            continue
        given = {**params.get(method, {}), **pair_params.get(method, {})}
        if given and isinstance(fields_.get("method_params", {}), dict):
            fields_["method_params"] = {**given, **fields_.get("method_params", {})}
        at = ", ".join(f"{k}={v}" for k, v in point.items()) or "base"
        if c_name is not None:
            at = f"condition {c_name}, {at}"
            fields_["label"] = c_name
        if len(pairs) > 1:
            at = f"{t_model} -> {s_model}, {at}"
        where = f"{path} (at {at})"
        if isinstance(fields_.get("method_params"), dict):
            fields_["method_params"] = _resolve_layers(
                fields_["method_params"], layers, t_model, s_model, fields_.get("dataset"), where
            )
        s_fields = {**_preset(preset, "student", s_model, method, where), **fields_}
        student = _build(where, role="student", model=s_model, teacher=t_model, **s_fields)
        if student.role == "teacher":  # method none: the student alone, no teacher needed
            teachers.setdefault(student.config_hash, student)
            continue
        recipe = {k: v for k, v in shared.items() if k not in _STUDENT_ONLY}
        if student.teacher_seed is not None:  # one teacher for every student seed
            recipe["seed"] = student.teacher_seed
        # conditions are student fields: a teacher follows the spec's own preset
        recipe = {**_preset(top_preset, "teacher", t_model, "none", where), **recipe}
        teacher = _build(where, role="teacher", model=t_model, **{**recipe, **teacher_recipe})
        teachers.setdefault(teacher.config_hash, teacher)
        ck = str(experiment_dir(teacher) / "best.pt")
        student = student.replace(teacher_checkpoint_path=ck, teacher_hash=teacher.config_hash)
        students.setdefault(student.config_hash, student)
    t_done = {h for h, c in teachers.items() if Experiment(c).status().get("status") == "completed"}
    students = resolve_planned(students, t_done)  # auto:METRIC layers of analysed teachers
    done = t_done | {
        h for h, c in students.items() if Experiment(c).status().get("status") == "completed"
    }
    return KDPlan(
        str(data.get("name", path.stem)),
        list(teachers.values()),
        list(students.values()),
        done,
        spec_track(data, path),
    )


def _pairs(
    data: dict[str, Any], path: Path
) -> list[tuple[str, str, dict[str, dict[str, Any]], dict[str, Any], tuple[str, ...]]]:
    """(teacher, student, per-method parameters, student recipe, methods or conditions to
    skip) of each pair: the top-level teacher and student, or every `[[pairs]]` entry (not
    both)."""
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
        recipe = entry.get("recipe", {})
        if not isinstance(recipe, dict):
            raise SpecError(f"{where}: recipe: expected a table of student fields, e.g. lr = 0.01")
        _check(recipe, f"{where}: recipe")
        skip = entry.get("skip", [])
        if not isinstance(skip, list) or not all(isinstance(m, str) for m in skip):
            raise SpecError(f'{where}: skip: expected a list of methods, e.g. skip = ["fsp"]')
        named = set(METHOD_NAMES) | set(data.get("conditions", {}))
        for m in skip:
            if m not in named:
                raise SpecError(
                    f"{where}: skip: {m}: not a method or condition; allowed: "
                    f"{', '.join(sorted(named))}"
                )
        pairs.append((entry["teacher"], entry["student"], own, dict(recipe), tuple(skip)))
    return pairs


def _method_params(table: Any, where: str) -> dict[str, dict[str, Any]]:
    """A `params` table: method name -> that method's parameters (checked against the method)."""
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table of methods, e.g. params.dkd = {{ beta = 2.0 }}")
    if not table:
        return {}
    from .losses import check_method_params, parameter_names  # torch: only with params

    for method, values in table.items():
        if method not in METHOD_NAMES:
            raise SpecError(f"{where}: {method}: not a method; allowed: {', '.join(METHOD_NAMES)}")
        if not isinstance(values, dict):
            raise SpecError(f"{where}.{method}: expected a table of parameters")
        allowed = parameter_names(method)
        for key in values:
            if key not in allowed:
                raise SpecError(
                    f"{where}.{method}: {key}: not a parameter of {method!r}; allowed: "
                    f"{', '.join(allowed)}"
                )
        try:  # "@name" layer lists are checked once resolved, in each experiment's config
            check_method_params(method, {k: v for k, v in values.items() if not _layer_ref(k, v)})
        except UserError as exc:
            raise SpecError(f"{where}.{method}: {exc}") from None
    return table


def _layer_ref(key: str, value: Any) -> bool:
    """Whether a parameter is an "@name" reference to a `[layers.MODEL]` list."""
    return key in LAYER_KEYS and isinstance(value, str) and value.startswith("@")


_STUDENT_ONLY = (
    *("method", "method_params", "alpha", "init_epochs", "ce_weight", "label"),
    *STUDENT_FIELDS,  # a distillation's: teacher_seed, teacher_bn_nudge, teacher_logits
)


def _preset(name: Any, role: str, model: str, method: str, where: str) -> dict[str, Any]:
    """A preset's fields for one experiment (nothing without a preset)."""
    if name is None:
        return {}
    from .config import preset_fields

    try:
        return preset_fields(str(name), role, model, method)
    except UserError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _conditions(table: Any, path: Path) -> list[tuple[str | None, dict[str, Any]]]:
    """(name, student fields) of each `[conditions.NAME]` table; one unnamed one without any."""
    if not isinstance(table, dict):
        raise SpecError(f"{path}: conditions: expected [conditions.NAME] tables")
    if not table:
        return [(None, {})]
    out = []
    for name, fields_ in table.items():
        if not isinstance(fields_, dict):
            raise SpecError(f"{path}: conditions.{name}: expected a table of fields")
        _check({k: v for k, v in fields_.items() if k != "preset"}, f"{path}: conditions.{name}")
        out.append((str(name), fields_))
    return out


def _layer_lists(table: Any, path: Path) -> dict[str, dict[str, Any]]:
    """`[layers.<model>]`: named layer lists, each a list or a table by dataset."""
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise SpecError(f"{path}: layers: expected [layers.MODEL] tables of named lists")
    return table


def _resolve_layers(
    params: dict[str, Any],
    lists: dict[str, dict[str, Any]],
    teacher: str,
    student: str,
    dataset: Any,
    where: str,
) -> dict[str, Any]:
    """Method parameters with "@name" layer lists replaced by the model's (and dataset's) list."""
    out = dict(params)
    for key, model in zip(LAYER_KEYS, (teacher, student), strict=True):
        ref = out.get(key)
        if not _layer_ref(key, ref):
            continue
        value = lists.get(model, {}).get(ref[1:])
        if isinstance(value, dict):
            value = value.get(str(dataset))
        if not isinstance(value, list):
            raise SpecError(
                f"{where}: {key}: {ref} is not defined for {model}"
                + (f" on {dataset}" if dataset else "")
                + f" (give it in [layers.{model}])"
            )
        out[key] = value
    return out


def _build(where: str, **kw: Any) -> KDConfig:
    if isinstance(kw.get("milestones"), list):
        kw["milestones"] = tuple(kw["milestones"])
    try:
        if isinstance(kw.get("method_params"), dict):
            from .losses import explicit_params  # type-checks the parameters first

            kw["method_params"] = explicit_params(str(kw.get("method")), kw["method_params"])
        return KDConfig(**kw)
    except UserError as exc:
        raise SpecError(f"{where}: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:  # a value of the wrong type
        raise SpecError(f"{where}: {' '.join(str(exc).split())}") from None


def kd_task(config: KDConfig, threads: int | None = None, track: Any = None) -> dict[str, Any]:
    """Run one experiment in a worker (tracked to `track`, a sublim.tracking.TrackSpec, when
    given); returns its final status (errors as a status)."""
    from ..sweep.executors import set_torch_threads
    from .runner import run_experiment

    set_torch_threads(threads)
    try:
        return run_experiment(config, track=track)
    except Exception as exc:  # noqa: BLE001 (reported by the driver; the sweep goes on)
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
        try:  # failures before training started (data) also reach status.json, under the
            # lock: an experiment another process is training keeps the status it writes
            with Experiment(config) as exp:
                if exp.status().get("status") != "failed":
                    exp.write_status("failed", error=error)
        except (OSError, StoreError):
            pass
        return {"status": "failed", "error": error}


def execute(plan: KDPlan, executor: Any, quiet: bool = False, track: Any = None) -> int:
    """Teachers first, each student when its teacher has completed; returns failures. Each
    experiment is tracked to `track` (a TrackSpec) by the worker that trains it."""
    teacher_of = {s.config_hash: str(s.teacher_hash) for s in plan.students}
    ready = {t.config_hash for t in plan.teachers if t.config_hash in plan.done}
    failed: set[str] = set()
    queue: deque[KDConfig] = deque(t for t in plan.teachers if t.config_hash not in plan.done)
    waiting = [s for s in plan.students if s.config_hash not in plan.done]
    in_flight: dict[Any, KDConfig] = {}
    failures = 0

    def release() -> None:
        nonlocal waiting, failures
        now = [s for s in waiting if teacher_of[s.config_hash] in ready]
        for s in [s for s in waiting if teacher_of[s.config_hash] in failed]:
            _say(quiet, f"skipped (its teacher failed): {experiment_dir(s)}")
        waiting = [s for s in waiting if teacher_of[s.config_hash] not in ready | failed]
        now, unresolved = resolve_ready(now, lambda line: _say(False, line))  # auto:METRIC
        failures += unresolved
        queue.extend(now)

    release()
    limit = 2 * max(1, getattr(executor, "workers", 1))
    while queue or in_flight:
        while queue and len(in_flight) < limit:
            config = queue.popleft()
            in_flight[executor.submit(kd_task, config, executor.threads, track)] = config
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
