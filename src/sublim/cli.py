"""`sublim run | data`: thin front ends over ExperimentConfig, the engine and the store.

Every user error becomes one line `sublim: error: ...` on stderr and exit status 2, with no
traceback and no output files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .config import (
    DATASETS,
    DISTILL_LOSSES,
    EMNIST_SPLITS,
    MODEL_TYPES,
    NOISE_DISTS,
    ExperimentConfig,
)
from .errors import ConfigError, UserError
from .perturbspec import TIMINGS, parse_json, parse_shorthand

PROG = "sublim"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    d = ExperimentConfig()
    g = p.add_argument_group("run and output")
    g.add_argument(
        "--outdir", default=d.outdir, help="root of the output files (default: %(default)s)"
    )
    g.add_argument(
        "--seed",
        default=str(d.seed),
        help="base seed; every random stream is derived from it (default: %(default)s)",
    )
    g.add_argument(
        "--device", default=d.device, help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)"
    )
    g.add_argument(
        "--num-workers",
        default=str(d.num_workers),
        help="accepted for compatibility; data is held in memory, no DataLoader workers are used",
    )
    g.add_argument(
        "--sweep-name",
        default=d.sweep_name,
        help="free-form sweep label written to outputs (default: %(default)s)",
    )
    g.add_argument(
        "--run-label", default=d.run_label, help="free-form run label written to outputs"
    )
    g.add_argument(
        "--append-global", action="store_true", help="also append to <outdir>/*_all_seeds.csv"
    )
    g.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (the final summary line is still printed)",
    )

    g = p.add_argument_group("data")
    g.add_argument(
        "--data-dir",
        default=d.data_dir,
        help="directory with the dataset files, or torchvision's layout <dir>/MNIST/raw/; missing files are downloaded here (MNIST is bundled) (default: %(default)s)",
    )
    g.add_argument(
        "--dataset", default=d.dataset, help=f"{', '.join(DATASETS)} (default: %(default)s)"
    )
    g.add_argument(
        "--emnist-split",
        default=d.emnist_split,
        help=f"{', '.join(EMNIST_SPLITS)} (default: %(default)s)",
    )
    g.add_argument(
        "--class-count",
        default=None,
        help="keep labels 0..K-1 (after the EMNIST letters shift), K in 2..classes",
    )
    g.add_argument(
        "--class-selection",
        default=d.class_selection,
        help="class truncation rule; only 'first' (default: %(default)s)",
    )
    g.add_argument(
        "--classes",
        default=None,
        help="explicit class subset, e.g. 0,1 or 3,8; remapped to 0..K-1 in the given order",
    )

    g = p.add_argument_group("models")
    for role in ("teacher", "student"):
        g.add_argument(
            f"--{role}-type",
            default="mlp",
            help=f"{' or '.join(MODEL_TYPES)} (default: %(default)s)",
        )
    for role in ("teacher", "student"):
        g.add_argument(
            f"--{role}-hidden-dims",
            default="256,256",
            help="comma-separated MLP widths; for the default CNN the last value is fc1's width (default: %(default)s)",
        )
    for role in ("teacher", "student"):
        g.add_argument(
            f"--{role}-arch-spec",
            default=None,
            help="CNN feature layers: a JSON list or a path to a JSON file (see README)",
        )
    g.add_argument("--m", default=str(d.m), help="aux head output dimension (default: %(default)s)")

    g = p.add_argument_group(
        "layer initialisation and trainability",
        "Per layer, positional (one entry per layer in order, e.g. A,A,random,A) or named "
        "(name:value pairs, all:value first sets every layer, e.g. all:A,fc1:random). Init "
        "sources: A, B (shared by teacher and student layers of the same name and shape), "
        "random (the model's own). Booleans: true/false/1/0/yes/no/y/n/t/f.",
    )
    g.add_argument("--teacher-init", default=d.teacher_init, help="(default: all A)")
    g.add_argument("--student-init", default=d.student_init, help="(default: all A)")
    g.add_argument("--teacher-trainable", default=d.teacher_trainable, help="(default: all true)")
    g.add_argument("--student-trainable", default=d.student_trainable, help="(default: all true)")

    g = p.add_argument_group("training")
    g.add_argument("--teacher-epochs", default=str(d.teacher_epochs), help="(default: %(default)s)")
    g.add_argument("--student-epochs", default=str(d.student_epochs), help="(default: %(default)s)")
    g.add_argument(
        "--data-bsize", default=str(d.data_bsize), help="teacher batch size (default: %(default)s)"
    )
    g.add_argument(
        "--noise-bsize",
        default=str(d.noise_bsize),
        help="student noise batch size (default: %(default)s)",
    )
    g.add_argument(
        "--noise-steps",
        default=str(d.noise_steps),
        help="noise batches per student epoch (default: %(default)s)",
    )
    g.add_argument(
        "--teacher-lr",
        default=str(d.teacher_lr),
        help="teacher Adam learning rate (default: %(default)s)",
    )
    g.add_argument(
        "--student-lr",
        default=str(d.student_lr),
        help="student Adam learning rate (default: %(default)s)",
    )
    g.add_argument(
        "--distill-loss",
        default=d.distill_loss,
        help=f"{', '.join(DISTILL_LOSSES)} on the aux logits (default: %(default)s)",
    )
    g.add_argument(
        "--temperature",
        default=str(d.temperature),
        help="softmax temperature T of --distill-loss kl (loss scaled by T^2) (default: %(default)s)",
    )

    g = p.add_argument_group("noise")
    g.add_argument(
        "--noise-dist",
        default=d.noise_dist,
        help=f"{', '.join(NOISE_DISTS)}: U[-1,1], N(0,1) or Perlin scaled to max |1| (default: %(default)s)",
    )
    g.add_argument(
        "--perlin-res",
        default=str(d.perlin_res),
        help="Perlin grid resolution (default: %(default)s)",
    )
    g.add_argument(
        "--normalize-noise",
        action="store_true",
        help="apply the dataset's normalisation to the noise",
    )
    g.add_argument(
        "--eval-noise-batches",
        default=str(d.eval_noise_batches),
        help="noise batches for the aux MSE evaluation (default: %(default)s)",
    )
    g.add_argument(
        "--eval-noise-bsize", default=str(d.eval_noise_bsize), help="(default: %(default)s)"
    )

    g = p.add_argument_group(
        "perturbations",
        "Add std * N(0,1) to weights and/or biases of chosen layers at a timing: "
        + ", ".join(TIMINGS)
        + ".",
    )
    g.add_argument(
        "--perturb",
        action="append",
        default=[],
        metavar="SPEC",
        help="repeatable, e.g. 'student:aux_head,std=0.1,timing=before_student_training,include_bias=false'",
    )
    g.add_argument(
        "--perturb-spec",
        action="append",
        default=[],
        metavar="JSON",
        help="JSON object or list (or a path to a JSON file) with fields target, layers, std, timing, include_weight, include_bias, distribution",
    )


def _int(flag: str, text: str | None, optional: bool = False) -> Any:
    if text is None and optional:
        return None
    try:
        return int(str(text).strip())
    except ValueError:
        raise ConfigError(flag, text, "expected an integer") from None


def _float(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(flag, text, "expected a number") from None


def _ints(flag: str, text: str) -> tuple[int, ...]:
    parts = [s.strip() for s in str(text).split(",")]
    try:
        return tuple(int(s) for s in parts)
    except ValueError:
        raise ConfigError(flag, text, "expected comma-separated integers, e.g. 256,256") from None


def json_or_file(flag: str, text: str) -> str:
    """A JSON text given inline or as a path to a file (inline JSON is tried first)."""
    stripped = text.strip()
    if stripped[:1] in "[{":
        return stripped
    path = Path(text).expanduser()
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(
            flag, text, f"neither inline JSON nor a readable file ({exc.strerror or exc})"
        ) from None


def config_from_args(ns: argparse.Namespace) -> ExperimentConfig:
    """Convert parsed CLI strings into a validated ExperimentConfig."""
    perturb = [parse_shorthand(s) for s in ns.perturb]
    for text in ns.perturb_spec:
        perturb += parse_json(json_or_file("--perturb-spec", text))
    kw: dict[str, Any] = {
        "seed": _int("--seed", ns.seed),
        "device": ns.device.strip().lower(),
        "outdir": ns.outdir,
        "data_dir": ns.data_dir,
        "num_workers": _int("--num-workers", ns.num_workers),
        "sweep_name": ns.sweep_name,
        "run_label": ns.run_label,
        "append_global": ns.append_global,
        "dataset": ns.dataset.strip().lower().replace("_", "-"),
        "emnist_split": ns.emnist_split.strip().lower(),
        "class_count": _int("--class-count", ns.class_count, optional=True),
        "class_selection": ns.class_selection.strip().lower(),
        "classes": None if ns.classes is None else _ints("--classes", ns.classes),
        "m": _int("--m", ns.m),
        "distill_loss": ns.distill_loss.strip().lower(),
        "temperature": _float("--temperature", ns.temperature),
        "noise_dist": ns.noise_dist.strip().lower(),
        "perlin_res": _int("--perlin-res", ns.perlin_res),
        "normalize_noise": ns.normalize_noise,
        "perturb": tuple(perturb),
    }
    for role in ("teacher", "student"):
        kw[f"{role}_type"] = getattr(ns, f"{role}_type").strip().lower()
        kw[f"{role}_hidden_dims"] = _ints(
            f"--{role}-hidden-dims", getattr(ns, f"{role}_hidden_dims")
        )
        spec = getattr(ns, f"{role}_arch_spec")
        kw[f"{role}_arch_spec"] = (
            None if spec is None else json_or_file(f"--{role}-arch-spec", spec)
        )
        for what in ("init", "trainable"):
            kw[f"{role}_{what}"] = getattr(ns, f"{role}_{what}")
        kw[f"{role}_epochs"] = _int(f"--{role}-epochs", getattr(ns, f"{role}_epochs"))
        kw[f"{role}_lr"] = _float(f"--{role}-lr", getattr(ns, f"{role}_lr"))
    for name in (
        "data_bsize",
        "noise_bsize",
        "noise_steps",
        "eval_noise_batches",
        "eval_noise_bsize",
    ):
        kw[name] = _int("--" + name.replace("_", "-"), getattr(ns, name))
    return ExperimentConfig(**kw)


def build_parser() -> argparse.ArgumentParser:
    """The `sublim` parser with its subcommands."""
    parser = _Parser(
        prog=PROG,
        description="Teacher -> student transfer experiments (subliminal learning).",
    )
    parser.add_argument("--version", action="version", version=f"sublim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run_p = sub.add_parser(
        "run",
        help="one teacher -> student experiment",
        description="Train a teacher on labels, then a student on the teacher's aux outputs "
        "over noise; append the run's rows under <outdir>/seed_<seed>/.",
    )
    _add_run_arguments(run_p)
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
    sweep_p.add_argument("--quiet", action="store_true", help="no progress bar")
    data_p = sub.add_parser(
        "data",
        help="find, download and verify a dataset",
        description="Locate a dataset under --data-dir (downloading what is missing from the "
        "official mirrors, with checksums) and print its sizes.",
    )
    data_p.add_argument("--dataset", default="mnist", help=f"{', '.join(DATASETS)}")
    data_p.add_argument("--emnist-split", default="balanced", help=f"{', '.join(EMNIST_SPLITS)}")
    data_p.add_argument("--data-dir", default="./MNIST", help="(default: %(default)s)")
    data_p.add_argument("--offline", action="store_true", help="never download")
    return parser


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


def _cmd_run(ns: argparse.Namespace) -> int:
    from .store import RunStore, check_writable

    config = config_from_args(ns)  # validates before torch is even imported
    check_writable(config.outdir)
    _check_data_dir(config.data_dir)
    from .engine import load_data, resolve_device, run

    resolve_device(config.device)
    progress = not ns.quiet and sys.stderr.isatty()
    load_data(config, progress=not ns.quiet)  # data errors surface before any work
    record = run(config, progress=progress)
    with RunStore(config.outdir, append_global=config.append_global).open(wait=120) as store:
        store.write(record)
    print(_summary(record, Path(config.outdir)))
    return 0


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


def _cmd_sweep(ns: argparse.Namespace) -> int:
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
    max_runs = _int("--max-runs", ns.max_runs, optional=True)
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


def _cmd_data(ns: argparse.Namespace) -> int:
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
        f"test {tuple(data.test_x.shape)}, {data.num_classes} classes, checksums verified"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    try:
        if ns.command == "run":
            return _cmd_run(ns)
        if ns.command == "sweep":
            return _cmd_sweep(ns)
        return _cmd_data(ns)
    except UserError as exc:
        sys.stderr.write(f"{PROG}: error: {' '.join(str(exc).split())}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted; nothing was written for the unfinished run\n")
        return 130
