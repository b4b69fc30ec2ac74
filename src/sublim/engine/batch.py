"""Many runs that share a teacher, trained as one stacked student: `run_group`.

Batching is invisible: `run_group(configs)` returns what `[run(c) for c in configs]` would,
within float tolerance (bmm instead of mm changes summation order; see docs/explanation/performance.md). Two savings:

* Stacking. Students with the same architecture (MLP widths or CNN spec), noise settings and
  learning rate train as K models in one, whatever their teachers, init sources, m, losses or
  perturbations, and on a GPU whatever their seeds (see `across_seeds_default`):
  feature-layer weights are stacked [K, out, ...]; linear layers run as batched matmuls and
  conv layers as one convolution with K x the output channels (the first, on a shared noise
  batch) then grouped convolutions (groups = K) on [batch, K x channels, H, W]. The first layer
  reads one shared noise batch when the K share a seed, else each model's own; each model
  keeps its own aux head and loss, and one Adam over the stacked tensors is K independent Adams
  (it is elementwise). Frozen layers get their gradient slice zeroed, so their Adam state stays
  zero and they never move. Each teacher's features on a noise batch are computed once for all
  the models that distil from it.
* Shared trajectories. The student stage has no schedule and its noise stream does not depend
  on steps per epoch or epochs, so runs that differ only in `noise_steps` / `student_epochs`
  are one training: a slot trains to the longest run's step count and each run is recorded when
  the slot reaches its own (N x E) steps, with its last epoch's mean loss taken from the
  per-step losses.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..config import ExperimentConfig
from ..config.archspec import cnn_shapes
from ..models.net import activation_sizes, apply_layer, channels_last, conv_layer
from ..records import RunRecord
from .alloc import release_free_memory, tune_allocator
from .losses import get_loss
from .optim import Adam
from .run import Prepared, finish, load_data, prepare, resolve_device, run
from .teacher import TeacherState, teacher_key, teacher_view, train_teacher_stage
from .train import Evaluation, evaluate_keeping, student_noise

MEMORY_BUDGET = 1.5 * 2**30  # bytes of activations + optimizer state per stack
MAX_STACK = 64


def slot_key(config: ExperimentConfig) -> str:
    """Identity of a student trajectory: everything but steps per epoch and epoch count."""
    d = config.result_dict()
    d.pop("noise_steps", None)  # absent with a noise pool
    d.pop("student_epochs")
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stack_key(config: ExperimentConfig) -> tuple[Any, ...] | None:
    """Runs with equal keys can train as one stacked model (None: this run cannot stack)."""
    if config.head_layout != "split" or config.noise_pool or config.diagnostics:
        return None  # these run one by one (still sharing their teacher)
    arch = config.arch_spec("student")
    return (
        config.dataset,  # the noise normalisation constants and the input shape
        config.input_shape,
        config.data_mean,
        config.data_std,
        config.student_type,
        config.student_hidden_dims if arch is None else json.dumps(arch, sort_keys=True),
        config.noise_dist,
        config.perlin_res if config.noise_dist == "perlin" else None,
        config.normalize_noise,
        config.noise_bsize,
        config.student_lr,
        config.device,
    )


def _slot_bytes(config: ExperimentConfig) -> float:
    """Rough memory of one stacked model: its input batch, activations (x3 for grads and what
    the backward keeps) and parameters (x4 for Adam's state and the gradient)."""
    spec = config.arch_spec("student")
    if spec is None:
        c, h, w = config.input_shape
        dims = [c * h * w, *config.student_hidden_dims, config.m]
        params = sum(a * b + b for a, b in zip(dims[:-1], dims[1:], strict=True))
        return 4.0 * (config.noise_bsize * (dims[0] + 3 * sum(dims[1:])) + 4 * params)
    sizes = [*activation_sizes(spec, config.input_shape), config.m]
    params, prev = 0, tuple(config.input_shape)
    for entry, shape in zip(spec, cnn_shapes(spec, config.input_shape, "spec"), strict=True):
        if entry["type"] == "conv2d":
            k = entry["kernel_size"]
            params += shape[0] * prev[0] * (k * k if isinstance(k, int) else k[0] * k[1])
        else:
            params += shape[0] * math.prod(prev)
        prev = shape
    params += math.prod(prev) * config.m  # the aux head
    return 4.0 * (config.noise_bsize * (sizes[0] + 3 * sum(sizes[1:])) + 4 * params)


def across_seeds_default(config: ExperimentConfig) -> bool:
    """Whether models of different seeds should share a stack on this config's device.

    Models of different seeds read different noise and different teachers, so stacking them only
    saves kernel launches: a clear win on a GPU, a measured loss on a CPU (figure 4's m = 1 sweep
    projected 3.4 h stacked across seeds against 2.4 h per seed on the 2-core reference CPU).
    """
    return resolve_device(config.device).type != "cpu"


def plan_stacks(
    configs: list[ExperimentConfig], across_seeds: bool | None = None
) -> list[list[ExperimentConfig]]:
    """Split runs into batches that train together (each <= the memory budget and MAX_STACK).

    `across_seeds` (default: by device, see `across_seeds_default`) lets one stack hold models
    of several seeds.
    """
    buckets: dict[Any, list[ExperimentConfig]] = {}
    singles: list[list[ExperimentConfig]] = []
    for c in configs:
        key = stack_key(c)
        if key is None:
            singles.append([c])
            continue
        mixed = across_seeds_default(c) if across_seeds is None else across_seeds
        buckets.setdefault(key if mixed else (*key, c.seed), []).append(c)
    out: list[list[ExperimentConfig]] = []
    for runs in buckets.values():
        slots: dict[str, list[ExperimentConfig]] = {}
        for c in runs:
            slots.setdefault(slot_key(c), []).append(c)
        per_slot = _slot_bytes(runs[0])
        k = max(1, min(MAX_STACK, int(MEMORY_BUDGET // per_slot)))
        # a seed's slots side by side: they share a noise batch and their teachers' features
        groups = sorted(slots.values(), key=lambda g: g[0].seed)
        for i in range(0, len(groups), k):
            out.append([c for g in groups[i : i + k] for c in g])
    return out + singles


@dataclass
class _Slot:
    """One stacked model and the runs recorded along its trajectory."""

    prep: Prepared
    runs: list[ExperimentConfig] = field(default_factory=list)


def run_group(
    configs: list[ExperimentConfig],
    teachers: Mapping[str, TeacherState] | None = None,
    progress: bool = False,
    across_seeds: bool | None = None,
    grouped: bool | None = None,
) -> list[RunRecord]:
    """Records for `configs` (same order), as `[run(c) for c in configs]` would give them.

    `teachers` (by teacher_key) are used where given; missing teachers are trained here.
    `grouped` (default: by device, see `grouped_convs_default`): stacked CNNs as grouped
    convolutions, else one model after the other.
    """
    if not configs:
        return []
    tune_allocator()
    device = resolve_device(configs[0].device)
    states: dict[str, TeacherState] = dict(teachers or {})
    curves = {teacher_key(c) for c in configs if c.diagnostics}  # teachers to record curves of
    for c in configs:
        key = teacher_key(c)
        if key not in states:
            rep = c.replace(diagnostics=True) if key in curves else c
            states[key] = train_teacher_stage(rep, load_data(c), device, progress)
    records: dict[int, RunRecord] = {}
    index = {id(c): i for i, c in enumerate(configs)}
    for batch in plan_stacks(configs, across_seeds):
        if stack_key(batch[0]) is None:
            for c in batch:
                records[index[id(c)]] = run(
                    c, progress=progress, teacher_state=states[teacher_key(c)]
                )
            continue
        for c, rec in zip(batch, _train_stack(batch, states, device, grouped), strict=True):
            records[index[id(c)]] = rec
    return [records[i] for i in range(len(configs))]


def _stacked_features(
    segments: list[tuple[torch.Tensor, int, int]],
    weights: list[torch.Tensor],
    biases: list[torch.Tensor],
) -> torch.Tensor:
    """ReLU MLP features of K stacked models -> [K, B, H].

    `segments` are (input batch [B, ...], start, end): models start..end-1 read that batch (the
    models of one seed share their noise), so the first layer is one matmul per segment and no
    [K, B, D] copy of the inputs is made.
    """
    w0 = weights[0]
    first = [torch.matmul(x.flatten(1), w0[a:b].transpose(1, 2)) for x, a, b in segments]
    h = F.relu((first[0] if len(first) == 1 else torch.cat(first)).add_(biases[0][:, None, :]))
    for w, b in zip(weights[1:], biases[1:], strict=True):
        h = F.relu(torch.baddbmm(b[:, None, :], h, w.transpose(1, 2)))
    return h


def _stacked_cnn_features(
    segments: list[tuple[torch.Tensor, int, int]],
    spec: list[dict[str, Any]],
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
) -> torch.Tensor:
    """Features of K stacked CNNs (spec `spec`) -> [K, B, D].

    Conv activations are [B, K x C, H, W] (model k's channels in block k): the first conv is one
    convolution per segment (the models that share its input) with their output channels side
    by side, the others grouped convolutions with groups = K. Pools and activations act per
    channel, so they run on all K at once; linear layers are batched matmuls on [K, B, D].
    """
    k_all = weights[0].shape[0]
    x0 = segments[0][0]
    fast = x0.device.type == "cpu"  # channels-last, as SplitHeadNet.features
    h: torch.Tensor | None = None
    for i, (entry, w, b) in enumerate(zip(spec, weights, biases, strict=True)):
        if entry["type"] == "conv2d":
            opts = {k: entry[k] for k in ("stride", "padding", "dilation")}
            if i == 0:
                parts = [
                    F.conv2d(
                        channels_last(x) if fast else x,
                        w[a:c].flatten(0, 1),
                        None if b is None else b[a:c].flatten(),
                        **opts,
                    )
                    for x, a, c in segments
                ]
                h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            else:
                bias = None if b is None else b.flatten()
                h = F.conv2d(h, w.flatten(0, 1), bias, groups=k_all, **opts)
        else:
            if h is None:  # a spec of linear layers only: one matmul per segment
                parts = [torch.matmul(x.flatten(1), w[a:c].transpose(1, 2)) for x, a, c in segments]
                h = parts[0] if len(parts) == 1 else torch.cat(parts)
                if b is not None:
                    h = h.add_(b[:, None, :])
            else:
                if h.dim() == 4:  # [B, K*C, H, W] -> [K, B, C*H*W], each model's own flatten
                    h = h.reshape(h.shape[0], k_all, -1).transpose(0, 1)
                wt = w.transpose(1, 2)
                h = torch.bmm(h, wt) if b is None else torch.baddbmm(b[:, None, :], h, wt)
        h = apply_layer(entry, h)
    assert h is not None
    if h.dim() == 4:
        h = h.reshape(h.shape[0], k_all, -1).transpose(0, 1)
    return h


def _one_cnn_features(
    x: torch.Tensor,
    spec: list[dict[str, Any]],
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    k: int,
) -> torch.Tensor:
    """Features [B, D] of model k of stacked CNNs on its (channels-last on the CPU) input."""
    h, flat = x, False
    for entry, w, b in zip(spec, weights, biases, strict=True):
        bias = None if b is None else b[k]
        if entry["type"] == "conv2d":
            h = conv_layer(entry, h, w[k], bias)
            continue
        if not flat:
            h, flat = h.flatten(1), True
        h = apply_layer(entry, F.linear(h, w[k], bias))
    return h if flat else h.flatten(1)


def grouped_convs_default(device: torch.device) -> bool:
    """Whether stacked CNNs run as grouped convolutions, else one model after the other.

    One after the other is the CPU's way: the K models still share their noise batch, its
    teacher outputs and one Adam step, but each runs its own convolutions and its backward
    before the next, so a stack holds one model's activations. Per model-step on the 2-core
    reference CPU (figure 3's CNN, K = 2, one thread, CPU time): grouped 541 ms, one after the
    other 520 ms, separate runs 534 ms. On a GPU, grouped convolutions fill the device.
    """
    return device.type != "cpu"


def _train_stack(
    batch: list[ExperimentConfig],
    teachers: Mapping[str, TeacherState],
    device: torch.device,
    grouped: bool | None = None,
) -> list[RunRecord]:
    """Train the slots of one stack together, recording each run at its step count."""
    started = time.perf_counter()
    slots: dict[str, _Slot] = {}
    init_reps: dict[tuple[str, int, int], Any] = {}  # initial teachers' CKA/RSA summaries
    for c in batch:
        key = slot_key(c)
        if key not in slots:
            state = teachers[teacher_key(c)]
            slots[key] = _Slot(prepare(c, load_data(c), device, state, init_reps))
        slots[key].runs.append(c)
    order = sorted(slots.values(), key=lambda s: s.prep.config.seed)  # stable within a seed
    students = [s.prep.student for s in order]
    spec = students[0].spec
    names = [e["name"] for e in spec]
    cnn = students[0].kind != "mlp"  # _stacked_features: ReLU linear layers with biases
    grouped = grouped_convs_default(device) if grouped is None else grouped
    first_conv = spec[0]["type"] == "conv2d"
    trainable = [s.prep.config.resolved_layer_configs["student_trainable"] for s in order]
    weights: list[torch.Tensor] = []
    biases: list[torch.Tensor | None] = []
    masks: list[torch.Tensor | None] = []
    for name in names:
        flags = torch.tensor([t[name] for t in trainable], dtype=torch.float32, device=device)
        weights.append(_stacked(students, name, "weight", bool(flags.any())))
        biases.append(_stacked(students, name, "bias", bool(flags.any())))
        masks.append(None if bool(flags.all()) else flags)
    aux = [s.layers["aux_head"] for s in students]
    params = [p for p in weights + biases if p is not None and p.requires_grad]
    params += [p for head in aux for p in head.parameters() if p.requires_grad]
    opt = Adam(params, lr=batch[0].student_lr) if params else None
    loss_fns = [get_loss(s.prep.config.distill_loss) for s in order]
    # one noise stream per seed, one teacher forward per (teacher, its late perturbations)
    seeds = [s.prep.config.seed for s in order]
    views = [teacher_view(s.prep.config) for s in order]
    trunks = {v: s.prep.teacher for v, s in zip(views, order, strict=True)}
    view_seed = {v: seed for v, seed in zip(views, seeds, strict=True)}
    for s in order:
        s.prep.teacher.eval()
    noise_norm = order[0].prep.noise_norm
    streams = {s.prep.config.seed: s.prep.config for s in order}  # same noise settings, own seed
    shape = (batch[0].noise_bsize, *batch[0].input_shape)
    bufs = {seed: torch.empty(shape) for seed in streams}
    checkpoints: dict[int, list[tuple[int, ExperimentConfig]]] = {}
    for k, s in enumerate(order):
        for c in s.runs:
            checkpoints.setdefault(c.noise_steps * c.student_epochs, []).append((k, c))
    total_steps = max(checkpoints)
    losses = torch.zeros(total_steps, len(order), device=device)
    release_free_memory()  # the evaluations' buffers, before the training steps' own
    results: dict[int, RunRecord] = {}
    # by (view, seed, subset size): the kept test rows depend on the seed and the size
    teacher_evals: dict[tuple[str, int, int], Evaluation] = {}
    ids = {id(c): i for i, c in enumerate(batch)}
    bounds = [k for k in range(1, len(seeds)) if seeds[k] != seeds[k - 1]]
    spans = list(zip([0, *bounds], [*bounds, len(seeds)], strict=True))  # slots are seed-sorted
    for step in range(total_steps):
        noise = {
            seed: student_noise(cfg, step, device, noise_norm, bufs[seed])
            for seed, cfg in streams.items()
        }
        segments = [(noise[seeds[a]], a, b) for a, b in spans]
        with torch.no_grad():
            feats = {v: t.features(noise[view_seed[v]]) for v, t in trunks.items()}
            targets = [
                s.prep.teacher.layers["aux_head"](feats[v])
                for s, v in zip(order, views, strict=True)
            ]
        if opt is not None:
            opt.zero_grad()
        if cnn and not grouped:  # one model after the other, each with its own backward
            per_model = []
            for x, a, b in segments:
                x = channels_last(x) if device.type == "cpu" and first_conv else x
                for k in range(a, b):
                    hk = _one_cnn_features(x, spec, weights, biases, k)
                    lk = loss_fns[k](aux[k](hk), targets[k], order[k].prep.config)
                    if opt is not None and lk.requires_grad:
                        lk.backward()
                    per_model.append(lk.detach())
            step_losses = torch.stack(per_model)
        else:
            # unbind, not h[k]: its backward stacks K grads once instead of K full-size zero fills
            if cnn:
                hs = _stacked_cnn_features(segments, spec, weights, biases).unbind(0)
            else:
                hs = _stacked_features(segments, weights, biases).unbind(0)  # type: ignore[arg-type]
            step_losses = torch.stack(
                [
                    fn(head(hk), target, s.prep.config)
                    for fn, head, hk, target, s in zip(
                        loss_fns, aux, hs, targets, order, strict=True
                    )
                ]
            )
            if opt is not None:
                step_losses.sum().backward()
        if opt is not None:
            for w, b, mask in zip(weights, biases, masks, strict=True):
                if mask is not None and w.grad is not None:
                    w.grad.mul_(mask.view(-1, *[1] * (w.dim() - 1)))
                    if b is not None and b.grad is not None:
                        b.grad.mul_(mask[:, None])
            opt.step()
        losses[step] = step_losses.detach()
        for k, c in checkpoints.get(step + 1, []):
            student = _unstack(students[k], names, weights, biases, k)
            last = losses[step + 1 - c.noise_steps : step + 1, k].mean().item()
            prep = order[k].prep
            teacher = prep.teacher
            late = any(
                p.target == "teacher" and p.timing == "after_student_training" for p in c.perturb
            )
            tkey = (views[k], seeds[k], prep.config.similarity_samples)  # teacher, kept rows
            if late:
                teacher = copy.deepcopy(teacher)  # finish() perturbs it; the trajectory goes on
            elif tkey not in teacher_evals:  # an unperturbed teacher: evaluated once
                test_x, test_y = prep.data.test_x.to(device), prep.data.test_y.to(device)
                teacher_evals[tkey] = evaluate_keeping(
                    teacher, test_x, test_y, prep.norm, prep.keep
                )
            known = None if late else teacher_evals[tkey]
            results[ids[id(c)]] = finish(prep, c, student, teacher, last, started, known)
    share = (time.perf_counter() - started) / len(batch)
    for rec in results.values():
        rec.run["runtime_seconds"] = share  # the stack's wall time, split evenly
    return [results[i] for i in range(len(batch))]


def _stacked(students: list[Any], name: str, kind: str, requires_grad: bool) -> torch.Tensor | None:
    """Layer `name`'s `kind` tensor of every student, stacked [K, ...] (None: no such tensor)."""
    tensors = [getattr(s.layers[name], kind) for s in students]
    if tensors[0] is None:
        return None
    return torch.stack([t.detach() for t in tensors]).requires_grad_(requires_grad)


@torch.no_grad()
def _unstack(
    template: torch.nn.Module,
    names: list[str],
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    k: int,
) -> Any:
    """A standalone copy of stacked model k (its aux and class heads copied from `template`)."""
    net = copy.deepcopy(template)
    for name, w, b in zip(names, weights, biases, strict=True):
        net.layers[name].weight.copy_(w[k])
        if b is not None:
            net.layers[name].bias.copy_(b[k])
    return net
