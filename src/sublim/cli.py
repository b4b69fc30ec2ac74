"""The `sublim` command line: parser (run | sweep | report | kd | data), flags -> configs, main().

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
from .config.perturbspec import TIMINGS, parse_json, parse_shorthand
from .config.presets import PRESETS, preset
from .errors import ConfigError, UserError

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
        "--preset",
        default=None,
        help=f"a published setup ({', '.join(PRESETS)}); flags given explicitly override it",
    )
    g.add_argument(
        "--outdir", default=d.outdir, help="root of the output files (default: %(default)s)"
    )
    g.add_argument(
        "--save-models",
        action="store_true",
        help="also write the initial teacher, trained teacher and trained student (state dicts "
        "+ config) to <outdir>/seed_<seed>/models/<run_id>/",
    )
    g.add_argument(
        "--diagnostics",
        action="store_true",
        help="also record per-epoch loss and test accuracy, sample predictions and aux outputs "
        "on noise (seed_<seed>/diagnostics/<run_id>.npz), plotted by `sublim report`",
    )
    g.add_argument(
        "--teacher-checkpoint",
        default=None,
        metavar="PATH",
        help="skip teacher training: start the student stage from this teacher.pt (its "
        "architecture, dataset and classes must match the run's)",
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
        help="directory with the dataset files, or torchvision's layout <dir>/MNIST/raw/; missing files are downloaded here (MNIST is bundled); for image-folder the root holding one directory per class (default: %(default)s)",
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
    g.add_argument(
        "--image-size",
        default=str(d.image_size),
        help="--dataset image-folder: resize images to this square size, RGB (default: %(default)s)",
    )
    g.add_argument(
        "--test-fraction",
        default=str(d.test_fraction),
        help="--dataset image-folder: share of images in the test split, chosen by a hash of "
        "each file's path (deterministic) (default: %(default)s)",
    )
    g.add_argument(
        "--data-mean",
        default=None,
        help="input normalisation mean per channel, e.g. 0.5 (with --data-std; default: the "
        "dataset's own, 0.1307/0.3081 for MNIST)",
    )
    g.add_argument("--data-std", default=None, help="input normalisation std per channel, e.g. 0.5")

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
    g.add_argument(
        "--head-layout",
        default=d.head_layout,
        help="split: class_head and aux_head; single: one `head` of classes + m outputs whose "
        "last m (ghost) logits are distilled (default: %(default)s)",
    )
    g.add_argument(
        "--init-scheme",
        default=d.init_scheme,
        help="torch-default (PyTorch's Linear/Conv init) or normal-fan-in (N(0, 1/sqrt(fan_in)) "
        "weights, zero bias) (default: %(default)s)",
    )

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
        "--augment",
        default="",
        help="affine augmentation of the teacher's training batches: rotate=DEGREES, "
        "translate=FRACTION, crop=PIXELS (padded random crop), hflip=PROBABILITY, e.g. "
        "rotate=60,crop=2 (default: none)",
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
        "--noise-pool",
        default=str(d.noise_pool),
        help="0: fresh noise every step; N: a fixed set of N noise images, reshuffled every "
        "student epoch (an epoch is then one pass over it; --noise-steps is unused) "
        "(default: %(default)s)",
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


def parse_int(flag: str, text: str | None, optional: bool = False) -> Any:
    """An integer flag value (None passes when optional); ConfigError names the flag."""
    if text is None and optional:
        return None
    try:
        return int(str(text).strip())
    except ValueError:
        raise ConfigError(flag, text, "expected an integer") from None


def parse_float(flag: str, text: str) -> float:
    """A float flag value; ConfigError names the flag."""
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
        "seed": parse_int("--seed", ns.seed),
        "device": ns.device.strip().lower(),
        "outdir": ns.outdir,
        "data_dir": ns.data_dir,
        "num_workers": parse_int("--num-workers", ns.num_workers),
        "sweep_name": ns.sweep_name,
        "run_label": ns.run_label,
        "append_global": ns.append_global,
        "dataset": ns.dataset.strip().lower().replace("_", "-"),
        "emnist_split": ns.emnist_split.strip().lower(),
        "class_count": parse_int("--class-count", ns.class_count, optional=True),
        "class_selection": ns.class_selection.strip().lower(),
        "classes": None if ns.classes is None else _ints("--classes", ns.classes),
        "m": parse_int("--m", ns.m),
        "distill_loss": ns.distill_loss.strip().lower(),
        "temperature": parse_float("--temperature", ns.temperature),
        "noise_dist": ns.noise_dist.strip().lower(),
        "perlin_res": parse_int("--perlin-res", ns.perlin_res),
        "normalize_noise": ns.normalize_noise,
        "perturb": tuple(perturb),
        "save_models": ns.save_models,
        "diagnostics": ns.diagnostics,
        "teacher_checkpoint": ns.teacher_checkpoint,
        "image_size": parse_int("--image-size", ns.image_size),
        "test_fraction": parse_float("--test-fraction", ns.test_fraction),
        "augment": ns.augment.strip(),
        "head_layout": ns.head_layout.strip().lower(),
        "init_scheme": ns.init_scheme.strip().lower(),
        "noise_pool": parse_int("--noise-pool", ns.noise_pool),
        "data_mean": None if ns.data_mean is None else _floats("--data-mean", ns.data_mean),
        "data_std": None if ns.data_std is None else _floats("--data-std", ns.data_std),
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
        kw[f"{role}_epochs"] = parse_int(f"--{role}-epochs", getattr(ns, f"{role}_epochs"))
        kw[f"{role}_lr"] = parse_float(f"--{role}-lr", getattr(ns, f"{role}_lr"))
    for name in (
        "data_bsize",
        "noise_bsize",
        "noise_steps",
        "eval_noise_batches",
        "eval_noise_bsize",
    ):
        kw[name] = parse_int("--" + name.replace("_", "-"), getattr(ns, name))
    if getattr(ns, "preset", None):
        explicit = getattr(ns, "explicit", set())
        kw.update({k: v for k, v in preset(ns.preset).items() if k not in explicit})
    return ExperimentConfig(**kw)


def _floats(flag: str, text: str) -> tuple[float, ...]:
    return tuple(parse_float(flag, part.strip()) for part in str(text).split(","))


def explicit_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations of the options written in `argv` (also as --flag=value or a unique prefix)."""
    options = {o: a.dest for a in parser._actions for o in a.option_strings}
    found: set[str] = set()
    for token in argv:
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        matches = {d for o, d in options.items() if o == name} or {
            d for o, d in options.items() if o.startswith(name)
        }
        if len(matches) == 1:
            found |= matches
    return found


def _add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", metavar="OUTDIR", help="a sublim output directory (or a parent)")
    p.add_argument("--out", default=None, help="where to write (default: OUTDIR/report)")
    g = p.add_argument_group("what to summarise")
    g.add_argument(
        "--by",
        action="append",
        default=None,
        metavar="AXIS",
        help="group by these columns (repeat or comma-separate; default: the axes that vary)",
    )
    g.add_argument(
        "--metric",
        action="append",
        default=None,
        metavar="NAME",
        help="metrics to summarise and plot (repeat or comma-separate; default: student and "
        "teacher final accuracy, student initial accuracy, student final aux loss; figures "
        "plot student_final_acc)",
    )
    g.add_argument(
        "--ci", default="percentile", help="bootstrap interval: percentile (default) or bca"
    )
    g.add_argument("--level", default="0.95", help="confidence level (default: %(default)s)")
    g.add_argument("--n-boot", default="10000", help="bootstrap resamples (default: %(default)s)")
    g.add_argument(
        "--ci-seed", default="0", help="seed of the bootstrap resampling (default: %(default)s)"
    )
    f = p.add_argument_group("figures")
    f.add_argument(
        "--figure",
        default=None,
        metavar="N",
        help="draw the paper's figure N (2-6) from all runs, whatever the sweep names",
    )
    f.add_argument(
        "--x",
        default=None,
        metavar="AXIS",
        help="also draw a generic plot of each sweep against this column",
    )
    f.add_argument("--format", default="png", help="figure formats, comma-separated: png, svg, pdf")
    f.add_argument("--html", action="store_true", help="also write one self-contained report.html")
    f.add_argument("--no-layers", action="store_true", help="skip the layer-similarity plots")
    f.add_argument("--quiet", action="store_true", help="do not print the summary table")


def build_parser() -> argparse.ArgumentParser:
    """The `sublim` parser with its subcommands."""
    parser = _Parser(
        prog=PROG,
        description="Teacher -> student transfer experiments (subliminal learning).",
    )
    parser.add_argument("--version", action="version", version=f"sublim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run_p = parser.run_parser = sub.add_parser(  # type: ignore[attr-defined]
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
    report_p = sub.add_parser(
        "report",
        help="summary tables with bootstrap CIs, the paper's figures, an HTML report",
        description="Load every run under OUTDIR (per-seed files and *_all_seeds.csv, any "
        "depth; damaged lines are reported and skipped), group runs by the axes that vary "
        "(or --by), and write summary.csv/summary.txt (n, mean, std, median, bootstrap CI per "
        "metric), the paper's figures for sweeps named fig2..fig6 (or --figure N), generic plots "
        "for other sweeps, layer-similarity plots and, with --html, one self-contained "
        "report.html. Files go to OUTDIR/report/ unless --out is given.",
    )
    _add_report_arguments(report_p)
    from .kd.cli import add_kd_parser

    add_kd_parser(sub, _Parser)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(argv)
    if ns.command == "run":
        ns.explicit = explicit_dests(parser.run_parser, argv)  # type: ignore[attr-defined]
    if ns.command is None:
        parser.print_help()
        return 2
    from . import commands

    try:
        if ns.command == "run":
            return commands.cmd_run(ns)
        if ns.command == "sweep":
            return commands.cmd_sweep(ns)
        if ns.command == "report":
            return commands.cmd_report(ns)
        if ns.command == "kd":
            from .kd.cli import cmd_kd

            return cmd_kd(ns)
        return commands.cmd_data(ns)
    except UserError as exc:
        sys.stderr.write(f"{PROG}: error: {' '.join(str(exc).split())}\n")
        return 2
    except KeyboardInterrupt:
        if ns.command == "kd":
            sys.stderr.write(
                f"{PROG}: interrupted; rerun the same command to resume from the "
                "last finished epoch\n"
            )
        else:
            sys.stderr.write(f"{PROG}: interrupted; nothing was written for the unfinished run\n")
        return 130
