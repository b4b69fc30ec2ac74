"""`sublim kd train-teacher | distill | sweep | layers | analyze`: flags -> KDConfig -> an
experiment or a sweep; `layers` prints a model's generalized layers, `analyze` their geometry."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import ConfigError, UserError
from ..kd.config import INIT_EPOCHS, METHOD_NAMES
from .args import add_track_argument, parse_float, parse_int, track_targets

RECIPE_DEFAULTS = {
    "epochs": "150",
    "batch_size": "128",
    "lr": "0.1",
    "momentum": "0.9",
    "weight_decay": "5e-4",
    "schedule": "cosine",
    "milestones": "150,180,210",
    "gamma": "0.1",
    "warmup_epochs": "0",
    "label_smoothing": "0.1",
    "optimizer": "sgd",
    "pct_start": "0.3",
    "onecycle_plan": "exact",
    "backbone_lr_mult": "0.01",
}


def add_parser(sub: Any, parser_class: type) -> None:
    """The `kd` command with its two subcommands."""
    kd = sub.add_parser(
        "kd",
        help="classical and feature distillation on CIFAR-style and ImageNet models "
        "(train-teacher, distill, sweep)",
        description="Train teachers and distil students (every method of RepDistiller and "
        "mdistiller: KD, FitNets, AT, FT, RKD, NST, SP, CC, VID, PKT, AB, FSP, KDSVD, CRD, OFD, "
        "ReviewKD, DKD, DOT, and SimKD, logit standardisation, KD_wo_CE's feature KD) on "
        "CIFAR-10/100, SVHN, TinyImageNet, the MNIST family or ImageNet. Each experiment "
        "has its own directory (<outdir>/<dataset>/<method>/<teacher>_to_<student>/seed_<s>_<hash>) "
        "with last.pt rewritten every epoch, best.pt, metrics.json and status.json; rerunning a "
        "command resumes an interrupted experiment and skips a completed one.",
    )
    kd_sub = kd.add_subparsers(dest="kd_command", metavar="COMMAND", parser_class=parser_class)
    teacher = kd_sub.add_parser("train-teacher", help="train a teacher with cross-entropy")
    teacher.add_argument("--model", default="resnet56", help="model name (default: %(default)s)")
    teacher.add_argument(
        "--pretrained",
        default=None,
        metavar="PATH|auto",
        help="start from torchvision-layout ImageNet weights (resnet34, vgg19_bn, vit_b, "
        "resnet18/34/50_imagenet): a .pth "
        "state dict, or auto to download PyTorch's published file; the backbone then learns at "
        "lr x --backbone-lr-mult",
    )
    teacher.add_argument(
        "--vit-pos-layout",
        default="torchvision",
        help="vit_b position grid from --pretrained: torchvision (class position first) or "
        "reference (the KD_wo_CE code's off-by-one, spec 9.9)",
    )
    _common(teacher)
    distill = kd_sub.add_parser("distill", help="distil a student from a trained teacher")
    distill.add_argument(
        "--method",
        required=True,
        help="none (the student alone, cross-entropy only), "
        + ", ".join(m for m in METHOD_NAMES if m != "fkd")
        + " or fkd (feature distillation over generalized layers: the KD_wo_CE paper's method "
        "and baselines); each method's parameters: --method-params",
    )
    distill.add_argument("--teacher", required=True, help="teacher model name, e.g. resnet110")
    distill.add_argument("--student", required=True, help="student model name, e.g. resnet20")
    distill.add_argument(
        "--teacher-checkpoint",
        default=None,
        help="teacher weights (a best.pt); default: the completed teacher experiment of that "
        "model, dataset and seed under --outdir",
    )
    distill.add_argument(
        "--alpha",
        default=None,
        help="loss = (1 - alpha) * CE + alpha * distill (raw distill loss); default: each "
        "method's reference weights",
    )
    distill.add_argument(
        "--method-params",
        default="{}",
        help="JSON object of method parameters, e.g. '{\"temperature\": 2}' or "
        '\'{"student_tap": "stage2"}\'',
    )
    distill.add_argument(
        "--init-epochs",
        default=None,
        help="epochs of the method's init stage first: FitNets' hints, FT's paraphraser, AB's "
        "and FSP's student features (default: "
        + ", ".join(f"{n} for {m}" for m, n in INIT_EPOCHS.items())
        + "; fitnets then trains its regressor jointly)",
    )
    _common(distill)
    sweep = kd_sub.add_parser(
        "sweep",
        help="run a KD sweep spec: datasets x methods x seeds, students after their teachers",
        description="Train every teacher of the spec, then each student as soon as its teacher "
        "has completed, on the chosen executor. Completed experiments are skipped and "
        "interrupted ones resume: rerun the command to finish a sweep (see figures/kd_*.toml).",
    )
    sweep.add_argument("spec", help="KD sweep spec (TOML)")
    sweep.add_argument(
        "--outdir", default="outputs/kd", help="experiments root (default: %(default)s)"
    )
    sweep.add_argument("--seeds", default=None, help="override the spec's seeds, e.g. 0..2")
    sweep.add_argument(
        "--executor",
        default="inline",
        help="inline, processes:N, dask-local:N or dask:tcp://HOST:PORT",
    )
    sweep.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (pairs x conditions, runs, CPU and GPU hours) and exit",
    )
    sweep.add_argument(
        "--gpu-tflops",
        type=float,
        default=None,
        metavar="R",
        help="--dry-run: the TFLOP/s one of your GPUs achieves on these networks, for the GPU "
        "hours (default: 10, an assumption for small CIFAR networks)",
    )
    sweep.add_argument("--quiet", action="store_true", help="no per-experiment lines")
    add_track_argument(sweep)
    layers = kd_sub.add_parser(
        "layers",
        help="print a model's generalized layers (index, name, shape)",
        description="The generalized layers of a model (the output of each ReLU, residual, "
        "inverted or encoder block and Flatten, in forward order) with their per-sample shapes "
        "for a dataset's input size: the indices fkd's student_layers / teacher_layers take "
        "(negative indices count from the end).",
    )
    layers.add_argument("model", help="model name, e.g. resnet34")
    layers.add_argument(
        "--dataset", default="cifar100", help="sets the input size (default: %(default)s)"
    )
    analyze = kd_sub.add_parser(
        "analyze",
        help="layer knowledge quality (S, I, E, Q), PCA/TwoNN dimensions, cosines of every "
        "generalized layer; CKA against a teacher",
        description="Analyse every generalized layer of a completed experiment (or a best.pt) on "
        "its training split, un-augmented, in eval mode, on class-balanced subsets (KD_wo_CE "
        "spec section 2): writes layer_quality.csv (cached by the model's identity and these "
        "settings) and layer_quality.png beside it; --against adds cka_<teacher>.csv/.png.",
    )
    analyze.add_argument("path", help="experiment directory or best.pt")
    analyze.add_argument("--seed", default="0", help="subset seed (default: %(default)s)")
    analyze.add_argument("--probe", action="store_true", help="also a linear-probe accuracy")
    analyze.add_argument("--against", default=None, help="teacher experiment (or best.pt): CKA")
    analyze.add_argument("--data-dir", default=None, help="dataset files (default: the config's)")
    analyze.add_argument("--dataset", default=None, help="for a checkpoint without config.json")
    analyze.add_argument(
        "--limit", default=None, help="first N training images (default: the config's)"
    )
    analyze.add_argument("--per-class-a", default=None, help="|A| per class (default 5000/C)")
    analyze.add_argument("--per-class-b", default=None, help="|B| per class (default <= 500)")
    analyze.add_argument("--top-k", default="4", help="layers marked in the figure (default 4)")
    analyze.add_argument("--cka-samples", default="1000", help="images for --against's CKA")
    analyze.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and output")
    g.add_argument(
        "--dataset",
        default="cifar100",
        help="cifar10, cifar100, svhn, tinyimagenet, mnist, fashion-mnist, kmnist or imagenet "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--data-dir",
        default="./data",
        help="dataset files (downloaded if missing); imagenet: the folder holding train/<wnid>/ "
        "and val/ (or its parent, as <data-dir>/imagenet), which you provide",
    )
    g.add_argument(
        "--workers",
        default=None,
        help="imagenet: processes decoding images (default: min(8, CPU cores); 0: in the "
        "training process); never changes results",
    )
    g.add_argument("--outdir", default="outputs/kd", help="experiments root (default: %(default)s)")
    g.add_argument("--seed", default="0", help="(default: %(default)s)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    g.add_argument("--train-limit", default="0", help="use only the first N training images")
    g.add_argument("--test-limit", default="0", help="evaluate on the first N test images only")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_track_argument(g)
    r = p.add_argument_group("training recipe")
    r.add_argument(
        "--preset",
        default=None,
        help="a named recipe; flags given explicitly win: kd-wo-ce-50e (AdamW, OneCycle, 50 "
        "epochs, the KD_wo_CE paper's protocol) or kd-wo-ce-240e (its SGD 240-epoch protocol)",
    )
    for name, default in RECIPE_DEFAULTS.items():
        r.add_argument(
            "--" + name.replace("_", "-"),
            default=None,
            help=f"(default: {default}){_HELP.get(name, '')}",
        )
    r.add_argument(
        "--ce-weight",
        default=None,
        help="cross-entropy weight (default: the method's reference weight; 1 without a method)",
    )
    r.add_argument("--drop-last", action="store_true", help="drop each epoch's last partial batch")
    r.add_argument(
        "--augment",
        default=None,
        help="training augmentation: crop=PIXELS (padded random crop), hflip=P, rotate, translate "
        "(default: crop=4,hflip=0.5; crop=4 for svhn, mnist, kmnist)",
    )
    f = p.add_argument_group("reproducing the KD_wo_CE code (see docs/how-to/reproduce.md)")
    f.add_argument(
        "--reference-behaviour",
        default=None,
        metavar="kd_wo_ce",
        help="every behaviour of the KD_wo_CE code at once (each option below, the OneCycle "
        "plan, the ViT position layout, whole-batch augmentation and fkd's sp_first_row_only, "
        "tail_start, tail_mode, projector_bn, vit_teacher_view where the code has them)",
    )
    f.add_argument(
        "--eval-batches",
        default="all",
        help="all (every test image, default) or reference: floor(N / --batch-size) sequential "
        "batches, as the code (9,984 of 10,000 images at 128)",
    )
    if p.prog.endswith("distill"):
        f.add_argument(
            "--teacher-seed",
            default=None,
            help="the teacher's seed (default: --seed): a fixed one shares one teacher among "
            "all student seeds, as the code trains one per dataset and model",
        )
        f.add_argument(
            "--teacher-bn-nudge",
            action="store_true",
            help="the code's train-mode forward of one zeros image through the teacher before "
            "distilling (moves its BatchNorm statistics once)",
        )
        f.add_argument(
            "--teacher-logits",
            default="online",
            help="online (default) or reference: the teacher's logits fixed by one pass over the "
            "training set, augmented on its own, read by every logit loss, as the code",
        )
    r.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    r.add_argument("--amp", action="store_true", help="float16 mixed precision (CUDA only)")
    r.add_argument(
        "--channels-last",
        action="store_true",
        help="channels_last layout on CUDA (the CPU always uses it)",
    )


_HELP = {
    "epochs": "; 0 with train-teacher --pretrained: evaluate those weights as they are (a teacher "
    "used as published)",
    "schedule": "; cosine, multistep (per epoch) or onecycle (per batch; --lr is the peak)",
    "milestones": "; multistep: epochs where lr is multiplied by --gamma",
    "optimizer": "; sgd or adamw (--momentum and --nesterov are SGD's)",
    "pct_start": "; onecycle: share of the steps warming up",
    "onecycle_plan": "; exact, or reference (the KD_wo_CE code's one extra planned step per epoch)",
    "backbone_lr_mult": "; with --pretrained: lr multiplier of the layers before the classifier",
}


def config_from_args(ns: argparse.Namespace) -> Any:
    """A KDConfig from parsed flags (one-line errors naming the flag)."""
    from ..kd.config import KDConfig, preset_fields

    role = "teacher" if ns.kd_command == "train-teacher" else "student"
    model = ns.model if role == "teacher" else ns.student
    method = "none" if role == "teacher" else ns.method.strip().lower()
    preset = {} if ns.preset is None else preset_fields(ns.preset, role, model, method)

    def text(name: str) -> str:  # the flag's value, else the preset's, else the default
        given = getattr(ns, name)
        if given is not None:
            return str(given)
        if name in preset:
            value = preset[name]
            return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return RECIPE_DEFAULTS[name]

    kw: dict[str, Any] = {
        "dataset": ns.dataset.strip().lower(),
        "data_dir": ns.data_dir,
        "outdir": ns.outdir,
        "device": ns.device.strip().lower(),
        "seed": parse_int("--seed", ns.seed),
        "train_limit": parse_int("--train-limit", ns.train_limit),
        "test_limit": parse_int("--test-limit", ns.test_limit),
        "workers": None if ns.workers is None else parse_int("--workers", ns.workers),
        "epochs": parse_int("--epochs", text("epochs")),
        "batch_size": parse_int("--batch-size", text("batch_size")),
        "lr": parse_float("--lr", text("lr")),
        "momentum": parse_float("--momentum", text("momentum")),
        "weight_decay": parse_float("--weight-decay", text("weight_decay")),
        "schedule": text("schedule").strip().lower(),
        "milestones": tuple(
            parse_int("--milestones", m) for m in text("milestones").split(",") if m
        ),
        "gamma": parse_float("--gamma", text("gamma")),
        "warmup_epochs": parse_int("--warmup-epochs", text("warmup_epochs")),
        "label_smoothing": parse_float("--label-smoothing", text("label_smoothing")),
        "optimizer": text("optimizer").strip().lower(),
        "pct_start": parse_float("--pct-start", text("pct_start")),
        "onecycle_plan": text("onecycle_plan").strip().lower(),
        "backbone_lr_mult": parse_float("--backbone-lr-mult", text("backbone_lr_mult")),
        "augment": ns.augment if ns.augment is not None else preset.get("augment"),
        "drop_last": ns.drop_last or bool(preset.get("drop_last", False)),
        "ce_weight": None if ns.ce_weight is None else parse_float("--ce-weight", ns.ce_weight),
        "nesterov": ns.nesterov,
        "amp": ns.amp,
        "channels_last": ns.channels_last,
        "eval_batches": ns.eval_batches.strip().lower(),
        "reference_behaviour": None
        if ns.reference_behaviour is None
        else ns.reference_behaviour.strip().lower(),
    }
    if role == "teacher":
        return KDConfig(
            role="teacher",
            model=ns.model,
            pretrained=ns.pretrained,
            vit_pos_layout=ns.vit_pos_layout.strip().lower(),
            **kw,
        )
    try:
        params = json.loads(ns.method_params)
    except json.JSONDecodeError as exc:
        raise ConfigError("--method-params", ns.method_params, f"not JSON ({exc.msg})") from None
    from ..kd.losses import explicit_params

    if not isinstance(params, dict):
        raise ConfigError("--method-params", ns.method_params, "expected a JSON object")
    return KDConfig(
        role="student",
        model=ns.student,
        teacher=ns.teacher,
        method=method,
        method_params=explicit_params(method, params),
        alpha=None if ns.alpha is None else parse_float("--alpha", ns.alpha),
        init_epochs=None if ns.init_epochs is None else parse_int("--init-epochs", ns.init_epochs),
        teacher_checkpoint_path=ns.teacher_checkpoint,
        teacher_seed=None
        if ns.teacher_seed is None
        else parse_int("--teacher-seed", ns.teacher_seed),
        teacher_bn_nudge=ns.teacher_bn_nudge,
        teacher_logits=ns.teacher_logits.strip().lower(),
        **kw,
    )


def cmd_kd(ns: argparse.Namespace) -> int:
    """Run one experiment (validating everything, including the method, before any data)."""
    from ..kd.runner import check_inputs, prepare_check, resolve_teacher, run_experiment

    if ns.kd_command is None:
        raise UserError(
            "kd: give a command: train-teacher, distill, sweep, layers or analyze "
            "(see 'sublim kd --help')"
        )
    if ns.kd_command == "sweep":
        return _cmd_sweep(ns)
    if ns.kd_command == "layers":
        return _cmd_layers(ns)
    if ns.kd_command == "analyze":
        from .kd_analyze import cmd_analyze

        return cmd_analyze(ns)
    config = config_from_args(ns)
    targets = track_targets(ns)
    check_inputs(config)  # everything the user wrote, before looking for a teacher or data
    config = resolve_teacher(config)
    prepare_check(config)
    progress = not ns.quiet and sys.stderr.isatty()
    result = run_experiment(config, progress=progress, track=_track(targets, config.outdir, "kd"))
    verb = "already completed" if result.get("skipped") else "completed"
    print(
        f"{verb}: best test acc {result['best_acc']:.4f} (epoch {result['best_epoch']}), last "
        f"{result['last_acc']:.4f} | {result['dir']}"
    )
    return 0


def _cmd_sweep(ns: argparse.Namespace) -> int:
    from ..kd.runner import prepare_check
    from ..kd.sweep import GPU_TFLOPS, execute, load_plan
    from ..sweep.executors import check_executor, make_executor

    if ns.gpu_tflops is not None and not ns.gpu_tflops > 0:
        raise UserError(f"--gpu-tflops {ns.gpu_tflops:g}: expected a rate > 0 (TFLOP/s)")
    plan = load_plan(ns.spec, ns.outdir, ns.seeds)
    targets = track_targets(ns, plan.track, f"{ns.spec}: track")
    check_executor(ns.executor)
    for config in plan.students:  # methods and layers, before anything runs (no teacher needed)
        try:
            prepare_check(
                config.replace(teacher_checkpoint_path=None), teacher=False, pretrained=False
            )
        except UserError as exc:  # say which experiment of the spec it is
            where = f"{config.teacher} -> {config.model}, {config.label or config.method}"
            raise UserError(f"{ns.spec} (at {where}, {config.dataset}): {exc}") from None
    print(plan.summary())
    if ns.dry_run:
        rate = GPU_TFLOPS if ns.gpu_tflops is None else ns.gpu_tflops
        print(plan.table(gpu_tflops=rate))
        print(plan.estimate(gpu_tflops=rate))
        return 0
    for config in plan.teachers:  # ImageNet weights: fetched and checked once, before any work
        if config.pretrained is not None and config.config_hash not in plan.done:
            prepare_check(config)
    executor = make_executor(ns.executor)
    try:
        failures = execute(plan, executor, ns.quiet, _track(targets, ns.outdir, plan.name))
    finally:
        executor.close()
    again = load_plan(ns.spec, ns.outdir, ns.seeds)
    print(again.summary() + (f"; {failures} failed" if failures else ""))
    return 1 if failures else 0


def _track(targets: tuple, outdir: str, group: str) -> Any:
    """The TrackSpec of a KD command (MLflow experiment / TensorBoard folder `group`: the sweep's
    name, or kd), recorded in <outdir>/tracking.json for the report; None without --track."""
    from ..tracking import TrackSpec
    from ..tracking.trackers import record_location

    spec = TrackSpec.make(targets, outdir, group)
    if spec is not None:
        record_location(outdir, spec)
    return spec


def _cmd_layers(ns: argparse.Namespace) -> int:
    """Print the generalized-layer table of a model for a dataset's input size."""
    from ..kd.config import KD_DATASETS, MODEL_NAMES

    model, dataset = ns.model.strip().lower(), ns.dataset.strip().lower()
    if model not in MODEL_NAMES:
        raise ConfigError("model", ns.model, f"allowed: {', '.join(MODEL_NAMES)}")
    if dataset not in KD_DATASETS:
        raise ConfigError("--dataset", ns.dataset, f"allowed: {', '.join(KD_DATASETS)}")
    import torch

    from ..kd.models import create_model

    classes, shape = KD_DATASETS[dataset]
    with torch.device("meta"):
        net = create_model(model, classes, image_size=shape[1])
    rows = net.layer_table(shape)
    width = max(len(r.name) for r in rows)
    print(f"{model} on {dataset} ({'x'.join(map(str, shape))}): {len(rows)} generalized layers")
    for r in rows:
        neg = r.index - len(rows)
        print(f"{r.index:>4} {neg:>5}  {r.name:<{width}}  {'x'.join(map(str, r.shape))}")
    return 0
