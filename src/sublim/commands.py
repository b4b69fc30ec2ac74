"""The `sublim run | sweep | report | data` commands behind the parser in cli.py (`kd`: kd.cli).

Each validates everything first (one-line errors, nothing written), imports torch only when
there is work to do, and leaves all file writing to the store.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .cli import PROG, config_from_args, parse_float, parse_int
from .config import DATASETS
from .errors import ConfigError


def _summary(record: Any, outdir: Path) -> str:
    r = record.run
    return (
        f"teacher acc {r['teacher_final_acc']:.4f} | student acc {r['student_init_acc']:.4f} -> "
        f"{r['student_final_acc']:.4f} | aux MSE {r['student_init_aux_loss']:.4g} -> "
        f"{r['student_final_aux_loss']:.4g} | {r['runtime_seconds']:.1f} s | "
        f"outputs: {outdir / f'seed_{record.seed:06d}'}"
    )


def _check_data_dir(path: str) -> None:
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(
            "--data-dir", path, "is not a directory; give the directory holding the files"
        )


def cmd_run(ns: argparse.Namespace) -> int:
    from .store import RunStore, check_writable

    config = config_from_args(ns)  # validates before torch is even imported
    check_writable(config.outdir)
    _check_data_dir(config.data_dir)
    from .engine import load_data, resolve_device, run

    resolve_device(config.device)
    _check_checkpoints([config])  # before any data is loaded or downloaded
    progress = not ns.quiet and sys.stderr.isatty()
    load_data(config, progress=not ns.quiet)  # data errors surface before any work
    record = run(config, progress=progress)
    with RunStore(config.outdir, append_global=config.append_global).open(wait=120) as store:
        store.write(record)
    print(_summary(record, Path(config.outdir)))
    return 0


def _check_checkpoints(configs: list[Any]) -> None:
    """Refuse, in one line and before any work, a --teacher-checkpoint that does not fit a run
    (checked once per distinct teacher)."""
    import torch

    from .engine.checkpoint import load_teacher_checkpoint
    from .engine.teacher import teacher_key

    seen: set[str] = set()
    for config in configs:
        if config.teacher_checkpoint is None or teacher_key(config) in seen:
            continue
        seen.add(teacher_key(config))
        load_teacher_checkpoint(config, torch.device("cpu"))


def _parse_set(items: list[str]) -> dict[str, Any]:
    from .sweep.spec import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError("--set", item, "expected KEY=VALUE, e.g. teacher_epochs=1")
        try:
            out[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = text  # a bare string
    return out


def cmd_sweep(ns: argparse.Namespace) -> int:
    from .store import RunStore, check_writable
    from .sweep.executors import check_executor, make_executor
    from .sweep.runner import SweepPlan, execute_sweep, plan_sweep
    from .sweep.spec import CONFIG_FIELDS, SWEEP_OWNED, SpecError, load_spec, parse_seeds

    spec = load_spec(ns.spec)
    overrides = _parse_set(ns.set)
    for key in overrides:
        if key in SWEEP_OWNED:
            raise ConfigError("--set", key, "set by the sweep; use --seeds or --outdir")
        if key not in CONFIG_FIELDS and not key.startswith("perturb."):
            raise ConfigError(
                "--set", key, f"unknown config field; allowed: {', '.join(CONFIG_FIELDS)}"
            )
    seeds = None if ns.seeds is None else parse_seeds(ns.seeds, "--seeds")
    max_runs = parse_int("--max-runs", ns.max_runs, optional=True)
    if max_runs is not None and max_runs < 1:
        raise ConfigError("--max-runs", max_runs, "expected an integer >= 1")
    outdir = ns.outdir or str(Path("outputs") / spec.name)
    check_writable(outdir)
    check_executor(ns.executor)
    store = RunStore(outdir, append_global=True)

    def make_plan() -> SweepPlan:
        try:
            return plan_sweep(spec, outdir, store, overrides, seeds, max_runs)
        except SpecError as exc:
            if overrides and "--set" not in str(exc):
                raise SpecError(f"{exc} (with --set {' '.join(ns.set)})") from None
            raise

    plan = make_plan()  # validates every run before anything is created
    from .engine import resolve_device

    for device in {c.device for c in plan.pending}:
        resolve_device(device)
    for data_dir in {c.data_dir for c in plan.pending}:
        _check_data_dir(data_dir)
    _check_checkpoints(plan.pending)
    if ns.dry_run:  # reads only: nothing is created
        print("\n".join(plan.summary()))
        return 0
    with store.open(wait=None):
        if store.recovered:  # open() completed an interrupted write: count it as finished
            plan = make_plan()
        if not plan.pending:
            print(f"sweep {spec.name}: all {plan.total} runs already finished in {outdir}")
            return 0
        if not ns.quiet:
            print("\n".join(plan.summary(examples=0)), file=sys.stderr)
        progress = not ns.quiet and sys.stderr.isatty()
        executor = make_executor(ns.executor)
        written = 0
        try:
            written = execute_sweep(plan, store, executor, progress)
        except KeyboardInterrupt:
            sys.stderr.write(
                f"{PROG}: interrupted; finished runs are written; rerun the same command to "
                "finish the rest\n"
            )
            return 130
        finally:
            executor.close()
    print(
        f"sweep {spec.name}: {written} runs written to {outdir} ({plan.finished} were already there)"
    )
    return 0


def cmd_data(ns: argparse.Namespace) -> int:
    from .config import EMNIST_SPLITS as splits
    from .data.datasets import load_dataset

    dataset = ns.dataset.strip().lower().replace("_", "-")
    if dataset not in DATASETS:
        raise ConfigError("--dataset", ns.dataset, f"allowed: {', '.join(DATASETS)}")
    split = ns.emnist_split.strip().lower()
    if dataset == "emnist" and split not in splits:
        raise ConfigError("--emnist-split", ns.emnist_split, f"allowed: {', '.join(splits)}")
    data = load_dataset(dataset, ns.data_dir, emnist_split=split, download=not ns.offline)
    print(
        f"{dataset}{'/' + split if dataset == 'emnist' else ''}: train {tuple(data.train_x.shape)}, "
        f"test {tuple(data.test_x.shape)}, {data.num_classes} classes"
        + ("" if dataset == "image-folder" else ", checksums verified")
    )
    return 0


def _names(values: list[str] | None) -> list[str] | None:
    """Repeated and comma-separated flag values as one list (None when the flag is absent)."""
    if values is None:
        return None
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def cmd_report(ns: argparse.Namespace) -> int:
    from .analysis.report import ReportOptions, build_report

    options = ReportOptions(
        by=_names(ns.by),
        metrics=_names(ns.metric),
        formats=tuple(dict.fromkeys(_names([ns.format]) or [])),
        html=ns.html,
        figure=ns.figure,
        x=ns.x,
        level=parse_float("--level", ns.level),
        method=ns.ci,
        n_resamples=parse_int("--n-boot", ns.n_boot),
        seed=parse_int("--ci-seed", ns.ci_seed),
        layers=not ns.no_layers,
    )
    if not options.formats:
        raise ConfigError("--format", ns.format, "allowed: png, svg, pdf (comma-separated)")

    def warn(message: str) -> None:
        sys.stderr.write(f"{PROG}: warning: {message}\n")

    result = build_report(ns.outdir, ns.out, options, warn=warn)
    if not ns.quiet:
        print(result.table_text)
    figures = [f for f in result.files if f.suffix in (".png", ".svg", ".pdf")]
    print(
        f"report: {result.n_runs} runs, {len(figures)} figure files, "
        f"{len(result.warnings)} warnings -> {result.out}"
        + (f" (open {result.out / 'report.html'})" if options.html else "")
    )
    return 0
