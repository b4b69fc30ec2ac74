"""The KD training loop: a teacher on labels, or a student distilled from a frozen teacher.

Batches come from a `kd.batches` source: an in-memory dataset stays on the device as uint8 and
is normalised and augmented per batch (crop + flip as one grid_sample, from a generator derived
from (seed, epoch, step)); a streamed one (ImageNet) is decoded and augmented per image by loader
workers, seeded by (seed, epoch, index). Either epoch order comes from (seed, epoch). Training is
therefore a function of (config, epoch): a run resumed from the checkpoint written after epoch e
continues exactly as if it had never stopped (bit for bit on a CPU). A teacher with --epochs 0
only evaluates its --pretrained weights once. This module computes; the `sink` it is given
(kd.runner's experiment) writes the files.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from .. import seeds
from ..engine.augment import Augmenter
from ..engine.train import Normalizer
from ..geometry.gram import one_thread
from ..models.net import channels_last as to_channels_last
from .batches import MemoryBatches, Source, make_source, memory_test_batches
from .config import KDConfig
from .data import KDData, StreamData
from .dot import DOT
from .losses import Distiller, combine, create_distiller, layer_tap
from .losses.base import TapShapes
from .losses.layers import STANDARD_LAYERS
from .models import TapNet, create_model

HISTORY_KEYS = ("epoch", "stage", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
PRETRAINED_STAGE = "pretrained"  # the one history row of an --epochs 0 run: no training
_LAYER = re.compile(r"^L(\d+)$")


def model_shapes(model: TapNet, in_shape: tuple[int, int, int]) -> TapShapes:
    """Per-sample shapes of a model's named taps and of its generalized layers ("L<k>"), with
    the taps that are its benchmark features (`TapNet.feature_taps`, the methods' defaults) and
    their pre-activation versions (`TapNet.preact_taps`)."""
    shapes = dict(model.tap_shapes(in_shape))
    shapes.update({layer_tap(g.index): tuple(g.shape) for g in model.layer_table(in_shape)})
    return TapShapes(shapes, model.feature_taps, model.preact_taps)


class _NoMetaInit(TorchFunctionMode):
    """Skips the initialisations of tensors on the meta device (torch.nn.init, random fills):
    they have no values to set, and a meta-device random op first imports torch._dynamo (seconds
    on a small CPU)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        if isinstance(target, torch.Tensor) and target.is_meta:
            name = getattr(func, "__name__", "")
            if getattr(func, "__module__", "") == "torch.nn.init" or name in _RANDOM_FILLS:
                return target
        return func(*args, **kwargs)


_RANDOM_FILLS = frozenset({"normal_", "uniform_", "random_", "exponential_", "bernoulli_"})


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Modules built inside are on the meta device and left uninitialised (see `_NoMetaInit`):
    for checking that they can be built, cheaply."""
    with torch.device("meta"), _NoMetaInit():
        yield


def blank_model(name: str, num_classes: int, image_size: int) -> TapNet:
    """Model `name` with zero weights on the CPU, in eval mode, for shapes and operation counts
    only: built without drawing initial values (the global RNG untouched), every tensor a view of
    one shared block of zeros (cache-sized; never train it), so that it costs milliseconds.
    Zeros are assigned rather than `to_empty` used: meta-device ops import sympy (seconds)."""
    with on_meta():
        model = create_model(name, num_classes, image_size=image_size)
    state = model.state_dict()
    sizes: dict[torch.dtype, int] = {}
    for t in state.values():
        sizes[t.dtype] = max(sizes.get(t.dtype, 0), t.numel())
    blocks = {dtype: torch.zeros(n, dtype=dtype) for dtype, n in sizes.items()}
    zeros = {k: blocks[t.dtype][: t.numel()].view(t.shape) for k, t in state.items()}
    model.load_state_dict(zeros, assign=True)
    left = [k for k, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{name}: tensors outside its state dict stay on meta: {left}")
    return model.eval()


@functools.lru_cache(maxsize=64)
def named_model_shapes(name: str, num_classes: int, in_shape: tuple[int, int, int]) -> TapShapes:
    """`model_shapes` of model `name`, measured once per process for validating configs (a
    sweep's too). Do not mutate the result.

    One forward of a `blank_model` on one blank image records the taps and, through
    `_forward_all`'s walk, the generalized layers: tens of milliseconds, where a first forward
    on the meta device costs seconds of setup."""
    model = blank_model(name, num_classes, in_shape[1])
    layers: list[tuple[int, ...]] = []

    def walk(x: torch.Tensor, _name: str) -> torch.Tensor:
        layers.append(tuple(x.shape[1:]))
        return x

    with torch.no_grad(), one_thread():
        out = model._forward_all(torch.zeros((1, *in_shape)), walk)
    shapes = {k: tuple(v.shape[1:]) for k, v in out.items()}
    shapes.update({layer_tap(i): shape for i, shape in enumerate(layers)})
    return TapShapes(shapes, model.feature_taps, model.preact_taps)


def method_params(config: KDConfig) -> dict[str, Any]:
    """The method's parameters, with fkd's layer lists defaulting to the paper's standard lists
    of the two models (spec section 3) and the attention MLPs sized for the batch."""
    params = dict(config.method_params)
    if config.method == "fkd":
        for key, model in (("student_layers", config.model), ("teacher_layers", config.teacher)):
            if key not in params and model in STANDARD_LAYERS:
                params[key] = list(STANDARD_LAYERS[model])
        params.setdefault("batch_size", config.batch_size)
    return params


def run_taps(
    model: TapNet,
    x: torch.Tensor,
    taps: Sequence[str],
    *,
    detach_after: int | None = None,
) -> dict[str, torch.Tensor]:
    """A model's requested outputs: named taps through `forward`, generalized layers ("L<k>")
    through `forward_layers`, which stops after the deepest one when "logits" is not asked for
    (a teacher whose logits no loss reads) and with `detach_after` cuts the gradient after that
    layer (the separated head)."""
    layers = [int(m.group(1)) for t in taps if (m := _LAYER.match(t))]
    if not layers and detach_after is None:
        return model(x, taps)
    named = [t for t in taps if t != "logits" and not _LAYER.match(t)]
    if named:
        raise ValueError(f"taps {named} cannot be mixed with generalized layers")
    stop = None if "logits" in taps or not layers else max(layers)
    feats, logits = model.forward_layers(x, layers, detach_after=detach_after, stop_after=stop)
    out = {layer_tap(k): v for k, v in feats.items()}
    if logits is not None:
        out["logits"] = logits
    return out


class Sink(Protocol):
    """Where the loop reports: after every epoch, the resumable state and (if better) the best
    weights. `kd.runner.Experiment` writes them to disk."""

    def save_epoch(self, state: dict[str, Any], best: dict[str, Any] | None) -> None: ...


@dataclass
class Models:
    """The student (trained), the frozen teacher and the distiller of one experiment."""

    student: TapNet
    teacher: TapNet | None = None
    distiller: Distiller | None = None
    student_taps: tuple[str, ...] = ("logits",)
    teacher_taps: tuple[str, ...] = ("logits",)
    # [N, C] teacher logits of the training set, fixed for the run (teacher_logits "reference")
    teacher_logits: torch.Tensor | None = None


@dataclass
class Progress:
    """What the loop has done so far (part of the resumable state)."""

    epoch: int = 0  # next epoch to run, counting init_epochs first
    history: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    best_acc: float = -1.0
    best_epoch: int = -1


def load_teacher(config: KDConfig, weights: dict[str, torch.Tensor] | None) -> TapNet:
    """The student's teacher model with its trained weights (on the CPU, mode as built)."""
    teacher = create_model(
        config.teacher,
        config.num_classes,
        generator=torch.Generator().manual_seed(0),
        image_size=config.input_shape[1],
    )
    teacher.load_state_dict(weights or {})
    return teacher


def build_models(
    config: KDConfig, device: torch.device, teacher_weights: dict[str, torch.Tensor] | None
) -> Models:
    """The experiment's models, initialised from derived seeds (the global RNG is untouched)."""
    k = config.num_classes
    size = config.input_shape[1]
    gen = seeds.generator(config.seed, "kd", "init", config.role, config.model)
    student = create_model(config.model, k, generator=gen, image_size=size)
    if config.pretrained is not None:
        from .pretrained import load_pretrained, pretrained_cache

        load_pretrained(
            student,
            config.model,
            config.pretrained,
            size,
            cache_dir=pretrained_cache(config.data_dir),
            generator=gen,
            pos_layout=config.vit_pos_layout,
            progress=False,
        )
    if config.role == "teacher":
        return Models(student.to(device))
    teacher = load_teacher(config, teacher_weights)
    if config.teacher_bn_nudge:  # the KD_wo_CE code's setup forward: train mode, one zeros image
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # Dropout: RNG untouched
            teacher.train()(torch.zeros(1, *config.input_shape))
    teacher.eval().requires_grad_(False)
    models = Models(student.to(device), teacher.to(device))
    if config.method == "none":
        return models
    params = method_params(config)
    if config.alpha is not None:
        params.setdefault("weight", 1.0)  # the notes' (1 - alpha) * CE + alpha * raw distill loss
    with torch.random.fork_rng(devices=[]):  # regressors, projectors: seeded, RNG untouched
        torch.manual_seed(seeds.derive(config.seed, "kd", "distiller", config.method))
        distiller = create_distiller(
            config.method,
            model_shapes(student, config.input_shape),
            model_shapes(teacher, config.input_shape),
            **params,
        )
    if distiller.uses_tail:  # the SimKD variant: a trainable teacher copy
        distiller.attach_teacher(teacher, config.input_shape)
    distiller.bind_teacher(teacher)  # e.g. OFD's margins, from the loaded teacher's BNs
    models.distiller = distiller.to(device)
    models.student_taps = tuple(dict.fromkeys(("logits", *distiller.student_taps)))
    if distiller.uses_tail:  # its logits come from the tail, not the student
        models.student_taps = tuple(distiller.student_taps)
    # the teacher computes only what the method reads (named-tap models return logits anyway)
    models.teacher_taps = tuple(distiller.teacher_taps) or ("logits",)
    return models


@torch.no_grad()
def reference_logits(
    config: KDConfig,
    teacher_weights: dict[str, torch.Tensor] | None,
    train_x: torch.Tensor,
    norm: Normalizer,
    data: KDData,
    amp: bool,
) -> torch.Tensor:
    """[N, C] logits of the teacher (as trained: eval mode, never nudged) over the training set in
    order, blocks of --batch-size each augmented on its own (the KD_wo_CE code's
    GenSoftenedLogits); the draws are seeded from the teacher, so all its students share them."""
    device = train_x.device
    last = channels_last(config, device)
    k = config.num_classes
    teacher = load_teacher(config, teacher_weights).to(device).eval()
    if last:
        teacher.to(memory_format=torch.channels_last)
    who = str(config.teacher_hash or config.teacher)
    augment = Augmenter(
        config.augmentation, seeds.derive(0, "kd", "reference_logits", who), data.mean, data.std
    )
    n, bs = train_x.shape[0], config.batch_size
    out = torch.empty(n, k, device=device)
    for step, i in enumerate(range(0, n, bs)):
        idx = torch.arange(i, min(i + bs, n), device=device)
        x = _layout(augment(norm.take(train_x, idx), 0, step), last)
        with torch.autocast(device.type, enabled=amp):
            out[i : i + bs] = teacher(x, ())["logits"].float()
    return out


def predict(models: Models, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """The student's class logits from its taps: its own classifier, or for SimKD the teacher's
    classifier on the projected feature (SimKD's test-time model)."""
    d = models.distiller
    if d is not None and d.name == "simkd":
        tap = s[d.student_taps[0]]
        return d.student_logits(tap, models.teacher.classifier)  # type: ignore[operator,union-attr]
    if d is not None and d.uses_tail:  # fkd's SimKD variant: the teacher's copied tail
        return d.tail_logits(s)  # type: ignore[union-attr,operator]
    return s["logits"]


Groups = list[tuple[list[torch.nn.Parameter], float]]  # (parameters, lr multiplier)


def _optimizer(
    config: KDConfig, groups: Groups, dot_delta: float | None = None
) -> torch.optim.Optimizer:
    """SGD or AdamW over parameter groups that carry their lr multiplier ("lr_mult"); DOT's
    per-loss-momentum SGD when `dot_delta` is given (kd_dot)."""
    param_groups = [{"params": p, "lr_mult": m} for p, m in groups if p]
    if dot_delta is not None:
        return DOT(
            param_groups,
            lr=config.lr,
            momentum=config.momentum,
            delta=dot_delta,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        param_groups,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov and config.momentum > 0,
    )


def _stage_optimizer(config: KDConfig, models: Models, stage: str) -> torch.optim.Optimizer:
    """The optimizer of a stage: over `_stage_params`, DOT in a kd_dot main stage."""
    d = models.distiller
    delta = d.dot_delta if d is not None and stage == "main" else None
    return _optimizer(config, _stage_params(config, models, stage), delta)


def set_lr(opt: torch.optim.Optimizer, lr: float, beta1: float | None = None) -> None:
    """Set every group's lr (times its multiplier) and, for OneCycle, the cycled momentum
    (AdamW's beta1 or SGD's momentum, as PyTorch's OneCycleLR does)."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        if beta1 is not None:
            if "betas" in group:
                group["betas"] = (beta1, group["betas"][1])
            elif group.get("momentum", 0) > 0:
                group["momentum"] = beta1


def _stage_params(config: KDConfig, models: Models, stage: str) -> Groups:
    """What an optimizer updates: in the init stage, what the method's `InitStage` names (the
    student: none of it, its features without the classifier head, or all of it) and the
    distiller's `init_parameters()` (FT: the paraphraser; AB: the connectors); in the main
    stage the student and the distiller's `main_parameters()` (none for AB and FSP, whose main
    stage is plain CE; FT's paraphraser stays frozen). With pretrained weights the student's
    backbone learns at lr x --backbone-lr-mult."""
    d = models.distiller
    init = d.init_stage if d is not None and stage == "init" else None
    trains = "all" if init is None else init.student
    split = models.student.param_groups()
    backbone_mult = config.backbone_lr_mult if config.pretrained is not None else 1.0
    groups: Groups = []
    if trains == "features":
        groups.append((split["backbone"], backbone_mult))
    elif trains == "all" and config.pretrained is not None:
        groups += [(split["backbone"], config.backbone_lr_mult), (split["head"], 1.0)]
    elif trains == "all":
        groups.append((list(models.student.parameters()), 1.0))
    if d is not None:
        groups.append((d.init_parameters() if init is not None else d.main_parameters(), 1.0))
    return groups


def _init_lr(config: KDConfig, models: Models) -> float:
    """The constant learning rate of the init stage: the method's `init_lr` of the recipe's
    --lr (FT: `paraphraser_lr`, RepDistiller's 0.01, unless it is None; others: --lr)."""
    d = models.distiller
    return config.lr if d is None else float(d.init_lr(config.lr))


def channels_last(config: KDConfig, device: torch.device) -> bool:
    """Whether models and batches run channels-last: always on the CPU (oneDNN's fast layout:
    a resnet110 -> resnet20 KD step at batch 128 took 550 ms against 700-740 ms in NCHW on the
    2-core reference CPU), on CUDA with `channels_last`. Only float rounding changes."""
    return device.type == "cpu" or (config.channels_last and device.type == "cuda")


def _layout(x: torch.Tensor, last: bool) -> torch.Tensor:
    return to_channels_last(x) if last and x.dim() == 4 else x


@torch.no_grad()
def evaluate(
    models: Models,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    norm: Normalizer,
    amp: bool,
    bsize: int = 1000,
    last: bool = False,
    reference: bool = False,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the student on the test set (already on the device);
    `last`: batches channels-last, as the models are. `reference`: the KD_wo_CE code's
    evaluation, floor(N / bsize) sequential batches (the last partial one dropped), accuracy
    over the images seen and the loss the mean of the batch means."""
    batches = memory_test_batches(x_all, y_all, norm, bsize, reference)
    return evaluate_batches(models, batches, amp, x_all.device, last)


@torch.no_grad()
def evaluate_batches(
    models: Models,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    amp: bool,
    device: torch.device,
    last: bool = False,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the student over (normalised x, y) test batches on
    `device`, in eval mode."""
    models.student.eval()
    d = models.distiller
    if d is not None:
        d.eval()
    own_head = d is None or (d.name != "simkd" and not d.uses_tail)
    taps_needed = ("logits",) if own_head else models.student_taps
    loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device)
    n = 0
    for x, y in batches:
        with torch.autocast(device.type, enabled=amp):
            taps = run_taps(models.student, _layout(x, last), taps_needed)
            logits = predict(models, taps).float()
        loss += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        n += y.numel()
    # equal batches: the mean of the batch means is the mean over the images seen
    return loss.item() / max(n, 1), correct.item() / max(n, 1)


def train(
    config: KDConfig,
    data: KDData | StreamData,
    device: torch.device,
    teacher_weights: dict[str, torch.Tensor] | None,
    sink: Sink,
    resume: dict[str, Any] | None = None,
    progress: bool = False,
    stop_after: Callable[[int], bool] | None = None,
) -> dict[str, Any]:
    """Train to the end (resuming from `resume`, a state the sink saved); returns the summary.

    `stop_after(epoch)` (tests) ends the loop after that epoch as a kill would, state saved.
    With --epochs 0 (a teacher's --pretrained weights) it evaluates once and saves them as
    best."""
    models = build_models(config, device, teacher_weights)
    if models.distiller is not None:  # CRD: memory banks sized and seeded (resume overwrites)
        models.distiller.bind_data(data.train_y, config.seed)
    cuda = device.type == "cuda"
    amp = config.amp and cuda
    last = channels_last(config, device)
    if last:
        for m in (models.student, models.teacher, models.distiller):
            if m is not None:
                m.to(memory_format=torch.channels_last)
    norm = Normalizer(data.mean, data.std, device)
    augment = Augmenter(
        config.augmentation, seeds.derive(config.seed, "kd", "augment"), data.mean, data.std
    )
    state = Progress()
    stage = "init" if config.init_stage else "main"
    opt = _stage_optimizer(config, models, stage)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    if resume is not None:
        state = Progress(
            resume["epoch"], resume["history"], resume["best_acc"], resume["best_epoch"]
        )
        models.student.load_state_dict(resume["model"])
        if models.distiller is not None:
            models.distiller.load_state_dict(resume["distiller"])
        stage = "init" if state.epoch < config.init_stage else "main"
        opt = _stage_optimizer(config, models, stage)
        if resume["stage"] == stage:
            opt.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        torch.set_rng_state(resume["rng"])
        if resume.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resume["cuda_rng"])
    else:  # Dropout (vgg*_bn classifiers) draws from the global RNG: seeded, so runs repeat
        torch.manual_seed(seeds.derive(config.seed, "kd", "dropout"))
    source = make_source(config, data, device, norm, augment)  # in memory: moved once
    if config.teacher_logits == "reference" and models.distiller is not None:
        assert isinstance(source, MemoryBatches) and isinstance(data, KDData)  # KDConfig checks
        models.teacher_logits = reference_logits(
            config, teacher_weights, source.train_x, norm, data, amp
        )
    steps = source.steps
    total_epochs = config.init_stage + config.epochs
    started = time.perf_counter()
    bar = tqdm(
        total=total_epochs * steps,
        initial=state.epoch * steps,
        disable=not progress,
        desc=f"{config.role} {config.model}",
        leave=False,
        dynamic_ncols=True,
    )
    try:
        if total_epochs == 0 and not state.history["epoch"]:  # pretrained weights, as they are
            _evaluate_pretrained(config, models, opt, scaler, state, source, amp, last, sink)
        while state.epoch < total_epochs:
            e = state.epoch
            if e == config.init_stage and stage == "init":
                stage = "main"
                opt = _stage_optimizer(config, models, stage)
            main_epoch = e - config.init_stage
            per_batch = stage == "main" and config.stepped_per_batch
            if per_batch:
                lr = config.onecycle_at(main_epoch * steps, steps)[0]
            else:
                lr = _init_lr(config, models) if stage == "init" else config.lr_at(main_epoch)
                set_lr(opt, lr)
            terms: dict[str, torch.Tensor] = {}  # named loss terms, summed over the epoch
            loss_sum, correct, seen = _epoch(
                config,
                models,
                opt,
                scaler,
                norm,
                augment,
                None,
                None,
                e,
                stage,
                amp,
                bar,
                terms,
                source=source,
            )
            test_loss, test_acc = evaluate_batches(models, source.test(), amp, device, last)
            seen = max(seen, 1)  # a streamed epoch whose every file was unreadable
            for key, value in zip(
                HISTORY_KEYS,
                (e + 1, stage, lr, loss_sum / seen, correct / seen, test_loss, test_acc),
                strict=True,
            ):
                state.history[key].append(value)
            # per-epoch means of each named loss term (tracking; older checkpoints lack them)
            state.history.setdefault("terms", [{} for _ in state.history["epoch"][:-1]]).append(
                {k: v.item() / seen for k, v in terms.items()}
            )
            _record_skipped(state, source)
            best = None
            if stage == "main" and test_acc > state.best_acc:
                state.best_acc, state.best_epoch = test_acc, main_epoch + 1
                best = _best(config, models, main_epoch + 1, test_acc)
            state.epoch = e + 1
            sink.save_epoch(_resumable(config, models, opt, scaler, state, stage), best)
            if stop_after is not None and stop_after(e):
                break
    finally:
        bar.close()
        if hasattr(source, "close"):
            source.close()
    h = state.history
    return {
        "epoch": state.epoch,
        "best_acc": state.best_acc,
        "best_epoch": state.best_epoch,
        "last_acc": h["test_acc"][-1] if h["test_acc"] else None,
        "train_seconds": time.perf_counter() - started,
        "extra_parameters": 0 if models.distiller is None else models.distiller.extra_parameters(),
        "skipped_files": source.skipped_files,
    }


def _record_skipped(state: Progress, source: Source) -> None:
    """The epoch's count of distinct unreadable files met so far (0 in memory; older
    checkpoints lack the list: zeros before)."""
    earlier = [0 for _ in state.history["epoch"][:-1]]
    state.history.setdefault("skipped_files", earlier).append(source.skipped_files)


def _best(config: KDConfig, models: Models, epoch: int, test_acc: float) -> dict[str, Any]:
    """best.pt's content: the weights (and the method's state) after main-stage `epoch`."""
    return {
        "weights": _cpu(models.student.state_dict()),
        "distiller": {} if models.distiller is None else _cpu(models.distiller.state_dict()),
        "model": config.model,
        "num_classes": config.num_classes,
        "epoch": epoch,
        "test_acc": test_acc,
        "config_hash": config.config_hash,
    }


def _evaluate_pretrained(
    config: KDConfig,
    models: Models,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: Progress,
    source: Source,
    amp: bool,
    last: bool,
    sink: Sink,
) -> None:
    """An --epochs 0 run: the loaded weights evaluated once, recorded as epoch 0 (stage
    "pretrained", no training values) and saved as best.pt as they are."""
    test_loss, test_acc = evaluate_batches(models, source.test(), amp, source.device, last)
    row = (0, PRETRAINED_STAGE, None, None, None, test_loss, test_acc)
    for key, value in zip(HISTORY_KEYS, row, strict=True):
        state.history[key].append(value)
    state.history.setdefault("terms", []).append({})
    _record_skipped(state, source)
    state.best_acc, state.best_epoch = test_acc, 0
    best = _best(config, models, 0, test_acc)
    sink.save_epoch(_resumable(config, models, opt, scaler, state, "main"), best)


def _epoch(
    config: KDConfig,
    models: Models,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    norm: Normalizer,
    augment: Augmenter,
    train_x: torch.Tensor | None,
    train_y: torch.Tensor | None,
    epoch: int,
    stage: str,
    amp: bool,
    bar: tqdm,
    terms: dict[str, torch.Tensor] | None = None,
    source: Source | None = None,
) -> tuple[float, float, int]:
    """One pass over the training set; returns (summed loss, correct count, images seen) and
    adds each named loss term (ce and the method's), times the batch size, to `terms`.

    The batches come from `source`, else from `train_x`/`train_y` on the device (in memory,
    normalised by `norm` and augmented by `augment`)."""
    if source is None:
        assert train_x is not None and train_y is not None
        source = MemoryBatches(config, train_x, train_y, norm, augment)
    device = source.device
    last = channels_last(config, device)
    student, teacher, distiller = models.student, models.teacher, models.distiller
    init = distiller.init_stage if distiller is not None and stage == "init" else None
    student.train()
    if init is not None and init.student == "features":  # the head neither trains nor drops out
        getattr(student, student.head_name).eval()
    if distiller is not None:
        distiller.train()
    if teacher is not None:  # eval, or train (BN batch statistics: OFD); never a gradient
        teacher.train(distiller is not None and distiller.teacher_mode == "train")
    # FT's init stage trains the paraphraser on the teacher alone: the student does not run
    # (RepDistiller keeps it in eval mode), so its BatchNorm statistics stay untouched
    runs_student = init is None or init.student != "none"
    # AB's and FSP's main stage is plain cross-entropy: no distiller loss, no teacher forward
    distills = distiller is not None and (init is not None or not distiller.ce_only_main)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    ce_weight = 1.0 if distiller is None or config.alpha is not None else distiller.ce_weight
    main_epoch = epoch - config.init_stage
    steps = source.steps
    per_batch = stage == "main" and config.stepped_per_batch
    detach_after = getattr(distiller, "detach_after", None) if stage == "main" else None
    if config.ce_weight is not None:  # the experiment's own cross-entropy weight
        ce_weight = config.ce_weight
    for step, (x, y, idx) in enumerate(source.epoch(epoch)):
        if per_batch:
            set_lr(opt, *config.onecycle_at(main_epoch * steps + step, steps))
        x = _layout(x, last)
        with torch.autocast(x.device.type, enabled=amp):
            s = None
            if runs_student:
                s = run_taps(student, x, models.student_taps, detach_after=detach_after)
            if distiller is not None and distiller.uses_tail:  # CE and KD train the teacher's copy
                s["logits"] = distiller.tail_logits(s)  # type: ignore[union-attr,operator]
            t = None
            fixed = models.teacher_logits
            if teacher is not None and distills:  # eval mode, no gradient
                if fixed is not None and set(models.teacher_taps) <= {"logits"}:
                    t = {"logits": fixed[idx]}  # only logits are read: no teacher forward
                else:
                    with torch.no_grad():
                        t = run_taps(teacher, x, models.teacher_taps)
                    if fixed is not None:
                        t["logits"] = fixed[idx]
            if init is not None:  # the method's unweighted init loss (FT: the paraphraser's)
                loss = distiller.init_loss(s, t)  # type: ignore[union-attr,arg-type]
            else:
                ce = F.cross_entropy(s["logits"].float(), y, label_smoothing=config.label_smoothing)
                # CRD reads the batch's dataset positions and its step (seeds its negatives)
                needs = distills and distiller.needs_index  # type: ignore[union-attr]
                where = {"index": idx, "step": step} if needs else {}
                losses = distiller(s, t, y, main_epoch, **where) if distills else {}  # type: ignore[misc]
                loss = combine(ce, losses, config.alpha, ce_weight=ce_weight)
                if isinstance(opt, DOT):  # DOT back-propagates the two parts separately
                    task_part = combine(ce, {}, config.alpha, ce_weight=ce_weight)
                    kd_part = sum(losses.values()) * (1.0 if config.alpha is None else config.alpha)
                if terms is not None:
                    for name, term in {"ce": ce, **losses}.items():
                        add = term.detach().float() * idx.numel()
                        terms[name] = terms[name] + add if name in terms else add
        if isinstance(opt, DOT) and init is None:  # two passes: the KD gradient, then the task's
            opt.zero_grad(set_to_none=True)
            kd_part.backward(retain_graph=True)
            opt.step_kd()
            opt.zero_grad(set_to_none=True)
            task_part.backward()
            opt.step()
        else:
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        loss_sum += loss.detach().float() * idx.numel()
        seen += idx.numel()
        if s is not None:
            correct += _train_correct(models, s, y, amp)
        bar.update(1)
    return loss_sum.item(), correct.item(), seen


@torch.no_grad()
def _train_correct(
    models: Models, s: dict[str, torch.Tensor], y: torch.Tensor, amp: bool
) -> torch.Tensor:
    """Correct predictions on a training batch (SimKD's projector runs in eval mode here, so
    this extra pass leaves its BatchNorm statistics alone)."""
    d = models.distiller
    if d is None or d.name != "simkd":
        return (s["logits"].argmax(1) == y).sum()
    d.eval()
    try:
        with torch.autocast(y.device.type, enabled=amp):
            return (predict(models, s).argmax(1) == y).sum()
    finally:
        d.train()


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _resumable(
    config: KDConfig,
    models: Models,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: Progress,
    stage: str,
) -> dict[str, Any]:
    """Everything needed to continue after this epoch exactly as without a stop."""
    return {
        "config_hash": config.config_hash,
        "epoch": state.epoch,
        "stage": stage,
        "model": _cpu(models.student.state_dict()),
        "distiller": {} if models.distiller is None else _cpu(models.distiller.state_dict()),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "history": state.history,
        "best_acc": state.best_acc,
        "best_epoch": state.best_epoch,
    }
