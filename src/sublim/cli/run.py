"""`sublim run`: the reference runner's flags -> one ExperimentConfig -> one run, written by the store.

Everything is validated before torch is imported or any data is read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import (
    DATASETS,
    DISTILL_LOSSES,
    EMNIST_SPLITS,
    MODEL_TYPES,
    NOISE_DISTS,
    ExperimentConfig,
)
from ..config.perturbspec import TIMINGS, parse_json, parse_shorthand
from ..config.presets import PRESETS, preset
from ..errors import ConfigError
from .args import (
    add_track_argument,
    json_or_file,
    parse_float,
    parse_floats,
    parse_int,
    parse_ints,
    track_targets,
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The `run` subcommand."""
    p = sub.add_parser(
        "run",
        help="one teacher -> student experiment",
        description="Train a teacher on labels, then a student on the teacher's aux outputs "
        "over noise; append the run's rows under <outdir>/seed_<seed>/.",
    )
    add_run_arguments(p)
    return p


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Every `sublim run` flag, grouped, with the reference runner's names and defaults."""
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
    add_track_argument(g)

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
            help="CNN feature layers: a JSON list or a path to a JSON file (see docs/tutorials/03-cnn-rgb.md)",
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
    g.add_argument(
        "--similarity-samples",
        default=str(d.similarity_samples),
        help="test images (a fixed subset drawn from the seed) for the teacher-student linear "
        "CKA and RSA of every hidden layer in layer_metrics.csv; 0: off (default: %(default)s)",
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
        "classes": None if ns.classes is None else parse_ints("--classes", ns.classes),
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
        "data_mean": None if ns.data_mean is None else parse_floats("--data-mean", ns.data_mean),
        "data_std": None if ns.data_std is None else parse_floats("--data-std", ns.data_std),
    }
    for role in ("teacher", "student"):
        kw[f"{role}_type"] = getattr(ns, f"{role}_type").strip().lower()
        kw[f"{role}_hidden_dims"] = parse_ints(
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
        "similarity_samples",
    ):
        kw[name] = parse_int("--" + name.replace("_", "-"), getattr(ns, name))
    if getattr(ns, "preset", None):
        explicit = getattr(ns, "explicit", set())
        kw.update({k: v for k, v in preset(ns.preset).items() if k not in explicit})
    return ExperimentConfig(**kw)


def _summary(record: Any, outdir: Path) -> str:
    r = record.run
    return (
        f"teacher acc {r['teacher_final_acc']:.4f} | student acc {r['student_init_acc']:.4f} -> "
        f"{r['student_final_acc']:.4f} | aux MSE {r['student_init_aux_loss']:.4g} -> "
        f"{r['student_final_aux_loss']:.4g} | {r['runtime_seconds']:.1f} s | "
        f"outputs: {outdir / f'seed_{record.seed:06d}'}"
    )


def check_data_dir(path: str) -> None:
    """Refuse a --data-dir that exists but is not a directory."""
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(
            "--data-dir", path, "is not a directory; give the directory holding the files"
        )


def cmd_run(ns: argparse.Namespace) -> int:
    """Run one experiment and append its rows; prints a one-line summary."""
    from ..store import RunStore, check_writable

    config = config_from_args(ns)  # validates before torch is even imported
    targets = track_targets(ns)
    check_writable(config.outdir)
    check_data_dir(config.data_dir)
    from ..engine import load_data, resolve_device, run

    resolve_device(config.device)
    check_checkpoints([config])  # before any data is loaded or downloaded
    progress = not ns.quiet and sys.stderr.isatty()
    load_data(config, progress=not ns.quiet)  # data errors surface before any work
    record = run(config, progress=progress)
    with RunStore(config.outdir, append_global=config.append_global).open(wait=120) as store:
        store.write(record)
    if targets:
        track_run(targets, config.outdir, config.sweep_name or "sublim", [record])
    print(_summary(record, Path(config.outdir)))
    return 0


def check_checkpoints(configs: list[Any]) -> None:
    """Refuse, in one line and before any work, a --teacher-checkpoint that does not fit a run
    (checked once per distinct teacher)."""
    import torch

    from ..engine.checkpoint import load_teacher_checkpoint
    from ..engine.teacher import teacher_key

    seen: set[str] = set()
    for config in configs:
        if config.teacher_checkpoint is None or teacher_key(config) in seen:
            continue
        seen.add(teacher_key(config))
        load_teacher_checkpoint(config, torch.device("cpu"))


def track_run(targets: tuple, outdir: str, group: str, records: list[Any]) -> None:
    """Log finished runs to the tracking targets (one tracked run each, no parent run)."""
    from ..tracking import RunsTracker, TrackSpec

    spec = TrackSpec.make(targets, outdir, group)
    if spec is not None:
        tracker = RunsTracker(spec, outdir, parent=False)
        tracker.log(records)
        tracker.close()
