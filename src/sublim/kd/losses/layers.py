"""Feature distillation over generalized layers (the KD_wo_CE paper, NeurReps 2025), method `fkd`.

Features are read by generalized-layer index (`kd.models`: tap "L<k>" is the output of the k-th
ReLU / residual, inverted or encoder block / Flatten of a model, in forward order; negative k
counts from the end). One method covers every configuration family of the paper's experiments:

* `mapping`: "one2one" (student layer i <-> teacher layer i), "full" (every student layer against
  every teacher layer, weight 1/k each; Base FKD+FC) or "attention" (SemCKD: per-sample weights
  from the batch Gram matrices through small MLPs, softmax over the teacher layers);
* `projector`: "conv1x1" (1x1 conv, no bias: the paper's SingleLayerConv) or "embed" (1x1 -> BN
  -> ReLU -> 3x3 -> BN -> ReLU -> 1x1, no biases, width 2 C_t: ThreeLayerConv); `relation="sp"`
  compares batch cosine-similarity matrices instead (Sim. Pres.; no projector);
* `separate_head`: the paper's own method. The backbone up to the last distilled student layer is
  trained by the feature loss alone; the layers after it by cross-entropy on the detached output
  of that layer (the training loop cuts the gradient there), jointly, with one optimizer;
* `logit_loss`: "kd" (Hinton KD, T^2 * KL) or "kd_std" (on z-scored logits) added on top: the
  paper's "+LL" variants and the baselines' "+VKD";
* `classifier="teacher_tail"`: the paper's SimKD variant. The student's logits are a trainable
  copy of the teacher's layers after its last distilled layer, run on the projected last
  student feature (pooled to the teacher's size if larger); cross-entropy and the logit loss
  train it, and it is the student's classifier at test time (`tail_logits`). The reference code
  starts the copy *at* that layer, running it twice (spec 9.4): `tail_start="at"`.

The reference code's other quirks, each off by default (`--reference-behaviour kd_wo_ce` turns
them on where the reference has them):
* `tail_mode`: "follow" (the tail trains in train mode and is evaluated in eval mode) or a mode
  pinned for the whole run, at test too: the reference's deep copy keeps the teacher's mode of
  the moment, "eval" when it stored teacher features (CIFAR, ViT teachers), "train" otherwise
  (TinyImageNet CNN teachers, augmented runs: BatchNorm on batch statistics, Dropout active);
* `projector_bn`: "train" keeps the projectors' BatchNorm in train mode at test (the reference
  switches only the student to eval; it matters for the teacher tail, which reads a projector);
* `vit_teacher_view`: the reference stores a ViT teacher's (N, tokens, D) features and reshapes
  them with `view` to (N, D, tokens) instead of transposing (spec 9.5): the MSE targets become a
  fixed scramble of the token x dim layout. SP and the attention weights are unaffected.

Alignment as in the paper's code: a vector feature (D,) is a D x 1 x 1 map; if the student map is
no larger than the teacher's in both spatial dimensions the teacher is adaptive-average-pooled to
the student's size, if it is larger in both the student is pooled to the teacher's, anything else
is refused. When either side is a transformer (token features (N, D)) the 1-D path is used: tokens
become a length-N axis with D channels (Conv1d projectors, adaptive_avg_pool1d). The per-sample
loss is the mean squared error over the projected feature's elements; the total is the mean over
student layers of the batch-mean of the (weighted) per-pair losses.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Distiller,
    DistillerConfigError,
    Shapes,
    Taps,
    _kl_softened,
    _positive,
    _tap,
    _wide,
)
from .logits import zscore

# The parameters' allowed names: declared once as the annotations' Literal types (which
# kd.losses.registry checks user input against), with the tuples derived from them.
LayerMapping = Literal["one2one", "full", "attention"]
Projector = Literal["conv1x1", "embed"]
Relation = Literal["mse", "sp"]
LogitLoss = Literal["none", "kd", "kd_std"]
Classifier = Literal["student", "teacher_tail"]
TailStart = Literal["after", "at"]
TailMode = Literal["follow", "eval", "train"]
ProjectorBN = Literal["follow", "train"]
MAPPINGS: tuple[str, ...] = get_args(LayerMapping)
PROJECTORS: tuple[str, ...] = get_args(Projector)
RELATIONS: tuple[str, ...] = get_args(Relation)
LOGIT_LOSSES: tuple[str, ...] = get_args(LogitLoss)
CLASSIFIERS: tuple[str, ...] = get_args(Classifier)
TAIL_STARTS: tuple[str, ...] = get_args(TailStart)
TAIL_MODES: tuple[str, ...] = get_args(TailMode)
PROJECTOR_BNS: tuple[str, ...] = get_args(ProjectorBN)
# teacher_layers may also name a layer-quality metric, resolved by analysing the teacher before
# the distiller is built (kd.config.auto_metric checks the metric, kd.autolayers resolves it)
AutoLayers = Annotated[str, "auto:METRIC (e.g. auto:q)"]
_LAYER = re.compile(r"^L(\d+)$")

# The paper's standard layer lists (its configs' StudentLayers / baseline TeacherLayers, spec
# section 3): the defaults when a config does not list layers.
STANDARD_LAYERS: dict[str, tuple[int, ...]] = {
    "resnet9": (1, 2, 3, 4),
    "resnet18": (2, 4, 6, 8),
    "resnet34": (3, 7, 13, 16),
    "mobilenetv2_w1": (3, 6, 13, 17),
    "vgg11_bn": (1, 3, 5, 7),
    "vgg19_bn": (3, 7, 11, 15),
    "vit_ett": (1, 3, 5, 7),
    "vit_b": (2, 4, 8, 10),
}


def layer_tap(index: int) -> str:
    """The tap name of generalized layer `index` (non-negative)."""
    return f"L{index}"


def gen_layer_count(shapes: Shapes) -> int:
    """How many generalized layers a model has, from its tap shapes ("L0".."L<n-1>")."""
    return sum(1 for k in shapes if _LAYER.match(k))


def resolve_layers(shapes: Shapes, layers: Sequence[int], side: str, param: str) -> tuple[int, ...]:
    """Layer indices made non-negative and checked against the model's range (a one-line error
    that lists the valid range with each layer's shape)."""
    n = gen_layer_count(shapes)
    if isinstance(layers, str) and layers.strip().lower().startswith("auto:"):
        raise DistillerConfigError(
            param,
            layers,
            "auto layers are resolved by analysing the teacher first (sublim kd distill and "
            "sublim kd sweep do it: kd.autolayers.resolve_auto_layers); here give indices",
        )
    if isinstance(layers, str | int) or not layers:
        raise DistillerConfigError(
            param, layers, "a non-empty list of layer indices, e.g. [1, 2], or auto:METRIC"
        )
    out = []
    for k in layers:
        if isinstance(k, bool) or not isinstance(k, int) or not -n <= k < n:
            table = ", ".join(f"{i}: {'x'.join(map(str, shapes[layer_tap(i)]))}" for i in range(n))
            raise DistillerConfigError(
                param, k, f"the {side} has generalized layers -{n}..{n - 1} ({table})"
            )
        out.append(k % n)
    return tuple(out)


def _as_map(shape: Sequence[int], one_d: bool) -> tuple[int, tuple[int, ...]]:
    """(channels, spatial size) of a per-sample feature shape in the 2-D or 1-D layout."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 1:
        return shape[0], (1,) if one_d else (1, 1)
    if len(shape) == 2:  # tokens (N, D): D channels over N positions
        return shape[1], (shape[0],)
    if one_d:
        return shape[0], (shape[1] * shape[2],)
    return shape[0], shape[1:]


def _to_map(x: Tensor, one_d: bool) -> Tensor:
    """A batch of features in the layout of `_as_map`: [B, C, H, W] or [B, C, L]."""
    if x.dim() == 2:
        return x[:, :, None] if one_d else x[:, :, None, None]
    if x.dim() == 3:
        return x.transpose(1, 2)
    return x.flatten(2) if one_d else x


def _projector(kind: str, c_in: int, c_out: int, one_d: bool) -> nn.Module:
    conv = nn.Conv1d if one_d else nn.Conv2d
    bn = nn.BatchNorm1d if one_d else nn.BatchNorm2d
    if kind == "conv1x1":
        return conv(c_in, c_out, 1, bias=False)
    mid = 2 * c_out
    return nn.Sequential(
        conv(c_in, mid, 1, bias=False),
        bn(mid),
        nn.ReLU(),
        conv(mid, mid, 3, padding=1, bias=False),
        bn(mid),
        nn.ReLU(),
        conv(mid, c_out, 1, bias=False),
    )


def _pool(x: Tensor, size: tuple[int, ...]) -> Tensor:
    if tuple(x.shape[2:]) == size:
        return x
    return F.adaptive_avg_pool1d(x, size) if x.dim() == 3 else F.adaptive_avg_pool2d(x, size)


def cosine_matrix(f: Tensor, eps: float = 1e-4) -> Tensor:
    """[B, B] cosine similarities of the flattened batch features (rows normalised with `eps`,
    NaN -> 0), the paper's DotProd relation."""
    g = F.normalize(_wide(f.flatten(1)), dim=1, eps=eps)
    return torch.nan_to_num(g @ g.T)


class _GramEmbed(nn.Module):
    """SemCKD's per-layer MLP: a Gram-matrix row (length B) -> an L2-normalised embedding."""

    def __init__(self, batch: int, dims: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for d_in, d_out in zip((batch, *dims[:-1]), dims, strict=True):
            layers += [nn.Linear(d_in, d_out), nn.LeakyReLU()]
        self.net = nn.Sequential(*layers)
        self.batch = batch

    def forward(self, f: Tensor) -> Tensor:
        f = f.flatten(1)
        gram = f @ f.T
        if gram.shape[1] < self.batch:  # a last, smaller batch: zero-pad the rows
            gram = F.pad(gram, (0, self.batch - gram.shape[1]))
        return F.normalize(self.net(gram), dim=1)


class FeatureKD(Distiller):
    """The KD_wo_CE paper's feature distillation and its baselines (see the module docstring).

    Reference: "Logit-Based Losses Limit the Effectiveness of Feature Knowledge Distillation"
    (NeurReps 2025, arXiv 2511.14981) and its code (Thegolfingocto/KD_wo_CE: FKD.py, KDUtils.py),
    as written down in the project's spec; SemCKD (Chen et al., AAAI 2021) for the attention.
    Defaults are the paper's: weight 1 (LSLossWeight) and cross-entropy weight 1, 1x1
    projectors, one-to-one mapping, no logit loss. Pass `separate_head=True` for "Ours".
    `sp_first_row_only=True` reproduces the reference code's Sim. Pres., which compares only the
    first row of each B x B matrix (a bug; the default compares the whole matrix); `tail_start`,
    `tail_mode`, `projector_bn` and `vit_teacher_view` its other quirks (module docstring).
    """

    name = "fkd"
    default_weight = 1.0
    ce_weight = 1.0
    param_help: ClassVar[dict[str, str]] = {
        "student_layers": "the student's generalized layers to distil, by index (negative counts "
        "from the end; `sublim kd layers MODEL` lists them); `sublim kd` fills in the paper's "
        "standard list for the model when it has one",
        "teacher_layers": "the teacher's generalized layers, by index, or auto:METRIC: the "
        "teacher's k best layers by that layer-quality metric (k = the number of student "
        "layers); `sublim kd` fills in the paper's standard list for the model when it has one",
        "mapping": "which layers are compared: one2one (student layer i with teacher layer i), "
        "full (every student layer with every teacher layer, weight 1/k each: Base FKD+FC) or "
        "attention (SemCKD's learned per-sample weights over the teacher layers)",
        "projector": "the learned map from a student feature to the teacher's channels: conv1x1 "
        "(one 1x1 convolution without bias: SingleLayerConv) or embed (1x1 -> BN -> ReLU -> "
        "3x3 -> BN -> ReLU -> 1x1, width 2 C_t: ThreeLayerConv)",
        "relation": "what is matched: mse (projected student features against teacher features) "
        "or sp (the batches' cosine-similarity matrices, Sim. Pres.; no projector, one2one only)",
        "separate_head": "the paper's method (Ours): the backbone up to the last distilled "
        "student layer learns from the feature loss alone, the layers after it from "
        "cross-entropy on that layer's detached output",
        "logit_loss": "a logit loss added on top (the paper's +LL, the baselines' +VKD): none, kd "
        "(Hinton KD, T^2 x KL) or kd_std (KD on z-scored logits)",
        "temperature": "softening temperature T of the logit loss, which is multiplied by T^2 "
        "(4: the paper's value); unused without `logit_loss`",
        "logit_weight": "weight of the logit loss (the `kd` term; not multiplied by `weight`)",
        "zscore_eps": "added to the per-sample standard deviation when `logit_loss` is kd_std "
        "(1e-6: the reference code's VKDNormalized)",
        "attention_dims": "output widths of the Linear + LeakyReLU layers of the attention MLPs "
        "that embed Gram-matrix rows (mapping attention only)",
        "batch_size": "input width of the attention MLPs, the longest batch (shorter Gram rows "
        "are zero-padded; mapping attention only); `sublim kd` fills in the experiment's "
        "batch size",
        "sp_first_row_only": "compare only the first row of each batch similarity matrix in "
        "relation sp, as the reference code does (a bug; off compares the whole matrix)",
        "classifier": "where the student's logits come from: student (its own head) or "
        "teacher_tail (a trainable copy of the teacher's layers after the last distilled one, "
        "run on the projected last student feature: the paper's SimKD variant)",
        "tail_start": "where the teacher-tail copy starts: after the last distilled teacher "
        "layer, or at it (the reference code, which runs that layer twice)",
        "tail_mode": "the teacher tail's train/eval mode: follow (train in training, eval at "
        "test) or pinned to eval or train for the whole run, as the reference's deep copy is",
        "projector_bn": "the projectors' BatchNorm mode: follow (the distiller's) or train (kept "
        "in train mode at test, as in the reference code)",
        "vit_teacher_view": "reshape a ViT teacher's (tokens, D) features to (D, tokens) with "
        "`view` instead of transposing, as the reference code does (a fixed scramble of the "
        "MSE targets)",
        "weight": "loss weight of the feature loss (the `feat` term; not of the logit loss); "
        "None: 1, the paper's LSLossWeight",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_layers: Sequence[int] | None = None,
        teacher_layers: Sequence[int] | AutoLayers | None = None,
        mapping: LayerMapping = "one2one",
        projector: Projector = "conv1x1",
        relation: Relation = "mse",
        separate_head: bool = False,
        logit_loss: LogitLoss = "none",
        temperature: float = 4.0,
        logit_weight: float = 1.0,
        zscore_eps: float = 1e-6,
        attention_dims: Sequence[int] = (256, 128),
        batch_size: int = 128,
        sp_first_row_only: bool = False,
        classifier: Classifier = "student",
        tail_start: TailStart = "after",
        tail_mode: TailMode = "follow",
        projector_bn: ProjectorBN = "follow",
        vit_teacher_view: bool = False,
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        for param, value, allowed in (
            ("mapping", mapping, MAPPINGS),
            ("projector", projector, PROJECTORS),
            ("relation", relation, RELATIONS),
            ("logit_loss", logit_loss, LOGIT_LOSSES),
            ("classifier", classifier, CLASSIFIERS),
            ("tail_start", tail_start, TAIL_STARTS),
            ("tail_mode", tail_mode, TAIL_MODES),
            ("projector_bn", projector_bn, PROJECTOR_BNS),
        ):
            if value not in allowed:
                raise DistillerConfigError(param, value, f"one of {', '.join(allowed)}")
        if student_layers is None or teacher_layers is None:
            raise DistillerConfigError(
                "student_layers" if student_layers is None else "teacher_layers",
                None,
                "list the generalized layers to distil (see 'sublim kd layers MODEL')",
            )
        s_idx = resolve_layers(s_shapes, student_layers, "student", "student_layers")
        t_idx = resolve_layers(t_shapes, teacher_layers, "teacher", "teacher_layers")
        if mapping == "one2one" and len(s_idx) != len(t_idx):
            raise DistillerConfigError(
                "teacher_layers",
                list(teacher_layers),
                f"one2one needs one teacher layer per student layer ({len(s_idx)}); "
                "use mapping 'full' or 'attention' to match every pair",
            )
        if relation == "sp" and mapping != "one2one":
            raise DistillerConfigError("mapping", mapping, "relation 'sp' pairs layers one2one")
        if classifier == "teacher_tail" and (mapping != "one2one" or relation != "mse"):
            raise DistillerConfigError(
                "classifier", classifier, "the teacher tail reads a one2one projection (mse)"
            )
        if (
            classifier == "teacher_tail"
            and any(len(s_shapes[layer_tap(k)]) == 2 for k in s_idx)
            and len(t_shapes[layer_tap(t_idx[-1])]) == 3
        ):
            raise DistillerConfigError(
                "classifier", classifier, "a transformer student cannot feed a CNN teacher's tail"
            )
        if classifier == "teacher_tail" and separate_head:
            raise DistillerConfigError("separate_head", True, "the teacher tail is the head")
        self.s_layers, self.t_layers = s_idx, t_idx
        self.mapping, self.relation, self.logit_loss = mapping, relation, logit_loss
        self.separate_head = bool(separate_head)
        self.temperature = _positive("temperature", temperature)
        self.logit_weight = float(logit_weight)
        self.zscore_eps = float(zscore_eps)
        self.sp_first_row_only = bool(sp_first_row_only)
        self.tail_mode, self.projector_bn = tail_mode, projector_bn
        self.vit_teacher_view = bool(vit_teacher_view)
        shapes = [
            *(s_shapes[layer_tap(k)] for k in s_idx),
            *(t_shapes[layer_tap(k)] for k in t_idx),
        ]
        self.one_d = any(len(s) == 2 for s in shapes)  # a transformer on either side
        self.t_is_tokens = len(t_shapes[layer_tap(t_idx[-1])]) == 2
        self.t_is_vector = len(t_shapes[layer_tap(t_idx[-1])]) == 1
        if mapping == "one2one":
            self.pairs = [(i, i) for i in range(len(s_idx))]
        else:
            self.pairs = [(i, j) for i in range(len(s_idx)) for j in range(len(t_idx))]
        self.projectors = nn.ModuleList()
        self.plans: list[tuple[tuple[int, ...] | None, tuple[int, ...] | None]] = []
        for i, j in self.pairs:
            s_c, s_hw = _as_map(s_shapes[layer_tap(s_idx[i])], self.one_d)
            t_c, t_hw = _as_map(t_shapes[layer_tap(t_idx[j])], self.one_d)
            if all(a <= b for a, b in zip(s_hw, t_hw, strict=True)):
                plan = (None, s_hw)  # pool the teacher to the student's size
            elif all(a > b for a, b in zip(s_hw, t_hw, strict=True)):
                plan = (t_hw, None)  # pool the student to the teacher's size
            else:
                raise DistillerConfigError(
                    "teacher_layers",
                    t_idx[j],
                    f"student layer {s_idx[i]} ({'x'.join(map(str, s_hw))}) and teacher layer "
                    f"{t_idx[j]} ({'x'.join(map(str, t_hw))}) cannot be aligned: the student "
                    "must be no larger in every spatial dimension, or larger in all",
                )
            self.plans.append(plan)
            if relation == "mse":
                self.projectors.append(_projector(projector, s_c, t_c, self.one_d))
        if mapping == "attention":
            dims = tuple(int(d) for d in attention_dims)
            self.queries = nn.ModuleList(_GramEmbed(batch_size, dims) for _ in s_idx)
            self.keys = nn.ModuleList(_GramEmbed(batch_size, dims) for _ in t_idx)
        self.classifier = classifier
        self.tail_after = t_idx[-1] - (1 if tail_start == "at" else 0)
        if self.tail_after < 0:
            raise DistillerConfigError(
                "tail_start", tail_start, "the teacher's layer 0 has no 'at'"
            )
        self.tail: nn.Module | None = None  # attach_teacher: the trainable copy
        self.tail_in_shape: tuple[int, ...] = ()
        self.student_taps = tuple(layer_tap(k) for k in s_idx)
        self.teacher_taps = tuple(layer_tap(k) for k in t_idx)
        if logit_loss != "none":
            if classifier == "student":  # the tail's logits replace the student's own
                self.student_taps += ("logits",)
            self.teacher_taps += ("logits",)

    @property
    def uses_tail(self) -> bool:
        """Whether the student's logits come from the teacher's tail (the SimKD variant)."""
        return self.classifier == "teacher_tail"

    def attach_teacher(self, teacher: nn.Module, in_shape: Sequence[int]) -> None:
        """Give the SimKD variant its trainable copy of the teacher (`in_shape`: the input's)."""
        if self.uses_tail:
            self.tail = copy.deepcopy(teacher).requires_grad_(True)
            self.tail_in_shape = tuple(in_shape)
            self.train(self.training)  # the tail's mode: the distiller's, or pinned

    def train(self, mode: bool = True) -> FeatureKD:
        """Set train/eval mode (`eval()` comes here too), then pin what the reference pins: the
        tail's mode (`tail_mode`) and the projectors' BatchNorm (`projector_bn`)."""
        super().train(mode)
        if self.tail is not None and self.tail_mode != "follow":
            self.tail.train(self.tail_mode == "train")
        if self.projector_bn == "train":
            for m in self.projectors.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train(True)
        return self

    def tail_logits(self, s: Taps) -> Tensor:
        """The student's logits through the teacher tail: the last student feature, pooled to the
        teacher's size if larger, projected, then the copied teacher layers after the last
        distilled one (tokens back to token-major for a transformer)."""
        if self.tail is None:
            raise RuntimeError("teacher_tail needs attach_teacher(teacher, in_shape) first")
        last = len(self.pairs) - 1
        f = _to_map(_tap(s, self.student_taps[last], "student"), self.one_d)
        s_size = self.plans[last][0]
        h = self.projectors[last](f if s_size is None else _pool(f, s_size))
        if self.t_is_tokens:
            h = h.transpose(1, 2)
        elif self.t_is_vector:
            h = h.flatten(1)
        return self.tail.forward_from(h, self.tail_after, self.tail_in_shape)  # type: ignore[operator]

    def extra_parameters(self) -> int:
        """Projectors and attention MLPs, plus the teacher layers the tail really runs."""
        own = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("tail."))
        if self.tail is None:
            return own
        table = self.tail.layer_table(self.tail_in_shape)  # type: ignore[operator]
        names = [g.name for g in table[self.tail_after + 1 :]]
        used = {
            id(p)
            for name, module in self.tail.named_modules()
            if any(name == n or name.startswith(n + ".") for n in names)
            for p in module.parameters()
        }
        head = getattr(self.tail, "head_name", "classifier")
        used |= {id(p) for p in getattr(self.tail, head).parameters()}
        return own + sum(p.numel() for p in self.tail.parameters() if id(p) in used)

    @property
    def detach_after(self) -> int | None:
        """The student layer after which the gradient is cut (the separated head), or None."""
        return max(self.s_layers) if self.separate_head else None

    def _pair_losses(self, f_s: list[Tensor], f_t: list[Tensor]) -> Tensor:
        """[B, P] per-sample MSE of every (student, teacher) pair."""
        out = []
        for p, ((i, j), (s_size, t_size)) in enumerate(zip(self.pairs, self.plans, strict=True)):
            s = f_s[i] if s_size is None else _pool(f_s[i], s_size)
            t = f_t[j] if t_size is None else _pool(f_t[j], t_size)
            d = _wide(self.projectors[p](s)) - _wide(t)
            out.append(d.pow(2).flatten(1).mean(1))
        return torch.stack(out, 1)

    def _target_map(self, f: Tensor) -> Tensor:
        """A teacher feature as the MSE's target map; with `vit_teacher_view`, token features
        (B, N, D) reinterpreted row-major as (B, D, N), as the reference's stored features are."""
        if self.vit_teacher_view and f.dim() == 3:
            return f.reshape(f.shape[0], f.shape[2], f.shape[1])
        return _to_map(f, self.one_d)

    def _sp(self, raw_s: list[Tensor], raw_t: list[Tensor]) -> Tensor:
        losses = []
        for i, j in self.pairs:
            r_s = cosine_matrix(raw_s[i])
            with torch.no_grad():
                r_t = cosine_matrix(raw_t[j])
            if self.sp_first_row_only:
                r_s, r_t = r_s[:1], r_t[:1]
            losses.append(F.mse_loss(r_s, r_t))
        return torch.stack(losses).mean()

    def forward(self, s: Taps, t: Taps, targets: Tensor, epoch: int = 0) -> dict[str, Tensor]:
        raw_s = [_tap(s, name, "student") for name in self.student_taps if name != "logits"]
        raw_t = [
            _tap(t, name, "teacher").detach() for name in self.teacher_taps if name != "logits"
        ]
        out: dict[str, Tensor] = {}
        if self.relation == "sp":
            out["feat"] = self.weight * self._sp(raw_s, raw_t)
        else:
            f_s = [_to_map(f, self.one_d) for f in raw_s]
            f_t = [self._target_map(f) for f in raw_t]
            per_pair = self._pair_losses(f_s, f_t)  # [B, P]
            k_s, k_t = len(self.s_layers), len(self.t_layers)
            if self.mapping == "one2one":
                per_layer = per_pair  # [B, k_s]
            else:
                grid = per_pair.view(-1, k_s, k_t)
                if self.mapping == "full":
                    w = torch.full_like(grid, 1.0 / k_t)
                else:
                    q = torch.stack([m(f) for m, f in zip(self.queries, raw_s, strict=True)], 1)
                    k = torch.stack([m(f) for m, f in zip(self.keys, raw_t, strict=True)], 1)
                    w = torch.softmax(torch.einsum("bsd,btd->bst", q, k), dim=2)
                per_layer = (w * grid).sum(2)
            out["feat"] = self.weight * per_layer.mean(0).mean()
        if self.logit_loss != "none":
            z_s, z_t = _tap(s, "logits", "student"), _tap(t, "logits", "teacher").detach()
            if self.logit_loss == "kd_std":
                z_s, z_t = zscore(z_s, self.zscore_eps), zscore(z_t, self.zscore_eps)
            out["kd"] = self.logit_weight * _kl_softened(z_s, z_t, self.temperature)
        return out
