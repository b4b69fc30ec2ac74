"""`sublim sweep SPEC`: expand a sweep spec, skip finished runs, run the rest on an executor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .args import PROG, add_track_argument, parse_int, track_targets
from .run import check_checkpoints, check_data_dir


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The `sweep` subcommand."""
    sweep_p = sub.add_parser(
        "sweep",
        help="run a sweep spec (TOML): many runs, resumable",
        description="Expand a sweep spec into runs, skip those already in --outdir (by "
        "config_hash), train each distinct teacher once (cached under <outdir>/teachers/) and "
        "write every finished run to the per-seed files and the *_all_seeds.csv aggregates. "
        "Rerun the same command to finish an interrupted sweep.",
    )
    sweep_p.add_argument("spec", help="sweep spec file (see figures/*.toml)")
    sweep_p.add_argument(
        "--outdir", default=None, help="output directory (default: outputs/<spec name>)"
    )
    sweep_p.add_argument(
        "--seeds", default=None, help="override the spec's seeds, e.g. 0..4 or 0,3"
    )
    sweep_p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field for every run (TOML value), e.g. --set teacher_epochs=1 --set student_hidden_dims=[64,64]",
    )
    sweep_p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would run (counts, teachers, examples) and exit",
    )
    sweep_p.add_argument(
        "--executor",
        default="inline",
        help="inline (default), processes:N, dask-local:N or dask:tcp://HOST:PORT",
    )
    sweep_p.add_argument(
        "--max-runs", default=None, help="run at most N of the pending runs this time"
    )
    sweep_p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar and no plan lines: only the final summary line",
    )
    add_track_argument(sweep_p)
    return sweep_p


def _parse_set(items: list[str]) -> dict[str, Any]:
    from ..sweep.spec import tomllib

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
    """Run (or with --dry-run, describe) a sweep; resumable and never duplicating a run."""
    from ..store import RunStore, check_writable
    from ..sweep.executors import check_executor, make_executor
    from ..sweep.runner import SweepPlan, execute_sweep, plan_sweep
    from ..sweep.spec import CONFIG_FIELDS, SWEEP_OWNED, SpecError, load_spec, parse_seeds

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
    targets = track_targets(ns, spec.track, f"{spec.path}: track")
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
    from ..engine import resolve_device

    for device in {c.device for c in plan.pending}:
        resolve_device(device)
    for data_dir in {c.data_dir for c in plan.pending}:
        check_data_dir(data_dir)
    check_checkpoints(plan.pending)
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
        tracker = _tracker(targets, outdir, spec.name)
        written = 0
        try:
            written = execute_sweep(plan, store, executor, progress, tracker)
        except KeyboardInterrupt:
            sys.stderr.write(
                f"{PROG}: interrupted; finished runs are written; rerun the same command to "
                "finish the rest\n"
            )
            return 130
        finally:
            executor.close()
            if tracker is not None:
                tracker.close()
    print(
        f"sweep {spec.name}: {written} runs written to {outdir} ({plan.finished} were already there)"
    )
    return 0


def _tracker(targets: tuple, outdir: str, name: str) -> Any:
    """The sweep's RunsTracker (MLflow experiment and TensorBoard folder = the sweep's name),
    or None without --track / track."""
    from ..tracking import RunsTracker, TrackSpec

    spec = TrackSpec.make(targets, outdir, name)
    return None if spec is None else RunsTracker(spec, outdir)
