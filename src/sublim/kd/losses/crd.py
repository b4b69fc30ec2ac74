"""Contrastive representation distillation (Tian et al., ICLR 2020), alone and with KD."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from ... import seeds
from .base import (
    Distiller,
    DistillerConfigError,
    Shapes,
    Taps,
    _kl_softened,
    _non_negative,
    _positive,
    _shape,
    _tap,
)
from .contrast import ContrastMemory, Mode, Negatives, draw_contrast, nce_loss


class Embed(nn.Module):
    """Linear(d_in, d) then x / ||x||_2 (no eps; RepDistiller's Embed + Normalize)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x.flatten(1))
        return x / x.pow(2).sum(1, keepdim=True).sqrt()


class CRD(Distiller):
    """Contrastive representation distillation: an NCE bound on the mutual information between
    the student's and the teacher's embeddings, with negatives from memory banks.

    Reference: Tian, Krishnan & Isola, ICLR 2020, "Contrastive Representation Distillation",
    eq. (18), as RepDistiller's `crd/` (mdistiller's CRD is the same): both pooled features
    ("pool", feat[-1]) go through a trainable Linear to `feat_dim` and are L2-normalised; each
    student embedding is contrasted with the teacher bank's row of its own image (the positive)
    and K rows of other classes' images, and symmetrically for the teacher embedding against
    the student bank; scores exp(<.,.> / T) / Z with Z fixed on the first batch; the two NCE
    losses are summed. After the loss the batch's bank rows take a momentum step towards the
    new embeddings. Defaults: RepDistiller's (`-b 0.8`, CE weight 1, 128, 16384, 0.07, 0.5,
    'exact'). The banks hold one row per training image, so the loop binds the training labels
    first (`bind_data`) and passes each batch's dataset indices (`needs_index`). extra
    parameters: the two embeddings, 128 (d_s + d_t) + 256; mdistiller also counts the banks.
    """

    name = "crd"
    default_weight = 0.8
    ce_weight = 1.0
    needs_index = True
    param_help: ClassVar[dict[str, str]] = {
        "student_tap": "the student tap whose flattened per-sample output is embedded "
        '("pool": the pooled feature, RepDistiller\'s feat[-1])',
        "teacher_tap": "the teacher tap whose flattened per-sample output is embedded "
        '("pool", feat[-1])',
        "feat_dim": "dimension of the embedding space and of the memory banks' rows (128)",
        "nce_k": "negatives contrasted with each positive, K (16384)",
        "nce_t": "temperature T of the scores exp(<v, bank row> / T) (0.07)",
        "nce_m": "momentum of the memory banks' update: row <- normalize(m row + (1 - m) v) (0.5)",
        "mode": "the positive: 'exact', the anchor image's own bank row (RepDistiller's "
        "default); 'relax', a random image of the same class",
        "negatives": "'without_replacement': K distinct negatives, or K with replacement for a "
        "class leaving fewer than K (RepDistiller's CIFAR sampler); 'with_replacement': all "
        "drawn independently (mdistiller's ImageNet sampler)",
        "weight": "loss weight of the summed NCE losses; None: 0.8, RepDistiller's `-b 0.8`, or "
        "1 when the experiment sets `alpha`",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_tap: str = "pool",
        teacher_tap: str = "pool",
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        mode: Mode = "exact",
        negatives: Negatives = "without_replacement",
        weight: float | None = None,
    ) -> None:
        super().__init__(s_shapes, t_shapes, weight=weight)
        d_s = math.prod(_shape(s_shapes, student_tap, "student", "student_tap", None))
        d_t = math.prod(_shape(t_shapes, teacher_tap, "teacher", "teacher_tap", None))
        for param, value in (("feat_dim", feat_dim), ("nce_k", nce_k)):
            if value < 1:
                raise DistillerConfigError(param, value, "an integer >= 1")
        if not 0.0 <= nce_m <= 1.0:
            raise DistillerConfigError("nce_m", nce_m, "a momentum in [0, 1]")
        if mode not in ("exact", "relax"):
            raise DistillerConfigError("mode", mode, "one of exact, relax")
        if negatives not in ("without_replacement", "with_replacement"):
            raise DistillerConfigError(
                "negatives", negatives, "one of without_replacement, with_replacement"
            )
        self.nce_k, self.nce_t, self.nce_m = int(nce_k), _positive("nce_t", nce_t), float(nce_m)
        self.mode, self.negatives = mode, negatives
        self.embed_s = Embed(d_s, feat_dim)
        self.embed_t = Embed(d_t, feat_dim)
        self.memory = ContrastMemory(feat_dim)
        self.seed: int | None = None
        self.student_taps = (student_tap,)
        self.teacher_taps = (teacher_tap,)

    def bind_data(self, train_y: Tensor, seed: int) -> None:
        """Size the banks for this training set (filled from `seed` unless a checkpoint's are
        loaded) and index its classes for the sampler. DistillerConfigError for a training
        set with fewer than two classes (no negatives)."""
        present = torch.unique(train_y)
        if present.numel() < 2:
            raise DistillerConfigError(
                "method",
                self.name,
                f"needs a training set of at least two classes (the negatives come from the "
                f"other classes); this one has {present.tolist()}",
            )
        self.seed = int(seed)
        self.memory.bind(train_y, seeds.generator(seed, "kd", "crd", "memory"))

    def contrast_indices(self, index: Tensor, epoch: int, step: int) -> Tensor:
        """[B, K+1] bank rows per anchor (positive first), drawn from a generator seeded by
        (seed, epoch, step), so a resumed run draws what an uninterrupted one would."""
        if self.seed is None or self.memory.labels.numel() == 0:
            raise RuntimeError(f"{self.name}: call bind_data(train_y, seed) before training")
        gen = seeds.generator(self.seed, "kd", "crd", "contrast", epoch, step, device=index.device)
        m = self.memory
        return draw_contrast(
            index,
            m.labels,
            (m.order, m.start, m.count),
            self.nce_k,
            mode=self.mode,
            negatives=self.negatives,
            generator=gen,
        )

    def crd_loss(self, f_s: Tensor, f_t: Tensor, index: Tensor, contrast_idx: Tensor) -> Tensor:
        """The unweighted CRD loss of pooled features f_s, f_t for the images `index`, against
        the bank rows `contrast_idx` [B, K+1]; then the banks' momentum update. Computed in the
        banks' precision (float32 under autocast: exp(1 / 0.07) overflows float16)."""
        dtype = self.memory.memory_s.dtype
        with torch.autocast(f_s.device.type, enabled=False):
            v_s = self.embed_s(f_s.to(dtype))
            v_t = self.embed_t(f_t.detach().to(dtype))
            s_s, s_t = self.memory.scores(v_s, v_t, contrast_idx, self.nce_t)
            log_z = self.memory.z.detach().log()
            n = self.memory.n_data
            loss = nce_loss(s_s, log_z[0], n) + nce_loss(s_t, log_z[1], n)
            self.memory.update(index, v_s, v_t, self.nce_m)
        return loss

    def forward(
        self,
        s: Taps,
        t: Taps,
        targets: Tensor,
        epoch: int = 0,
        *,
        index: Tensor | None = None,
        step: int = 0,
        contrast_idx: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """`index`: the batch's positions in the training set (required); `step`: the batch's
        number in the epoch (seeds the negatives); `contrast_idx`: explicit [B, K+1] bank rows
        instead of drawn ones (tests)."""
        if index is None:
            raise ValueError(
                f"{self.name} needs the batch's dataset indices: call it with index=... "
                "(the training loop does for methods with needs_index)"
            )
        if contrast_idx is None:
            contrast_idx = self.contrast_indices(index, epoch, step)
        f_s = _tap(s, self.student_taps[0], "student")
        f_t = _tap(t, self.teacher_taps[0], "teacher")
        return {"crd": self.weight * self.crd_loss(f_s, f_t, index, contrast_idx)}


class CRDKD(CRD):
    """CRD plus Hinton's KD: the CRD loss (weight 0.8) and KL(teacher || student) at T = 4.

    Reference: Tian et al., ICLR 2020, Table 1-2's "CRD+KD" row: RepDistiller's train_student.py
    with `--distill crd -a 1 -b 0.8` (CE weight `-r 1`): the KL term is RepDistiller's DistillKL
    (sum-KL / B * T^2) at weight `kd_weight` (`-a`), on top of CRD as in `crd`.
    """

    name = "crd_kd"
    param_help: ClassVar[dict[str, str]] = {
        **CRD.param_help,
        "temperature": "temperature of the KL term (4: RepDistiller's `--kd_T 4`)",
        "kd_weight": "weight of the KL term (1: RepDistiller's `-a 1`)",
        "weight": "loss weight of the CRD term; None: 0.8, RepDistiller's `-b 0.8`, or 1 when the "
        "experiment sets `alpha`",
    }

    def __init__(
        self,
        s_shapes: Shapes,
        t_shapes: Shapes,
        *,
        student_tap: str = "pool",
        teacher_tap: str = "pool",
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        mode: Mode = "exact",
        negatives: Negatives = "without_replacement",
        temperature: float = 4.0,
        kd_weight: float = 1.0,
        weight: float | None = None,
    ) -> None:
        super().__init__(
            s_shapes,
            t_shapes,
            student_tap=student_tap,
            teacher_tap=teacher_tap,
            feat_dim=feat_dim,
            nce_k=nce_k,
            nce_t=nce_t,
            nce_m=nce_m,
            mode=mode,
            negatives=negatives,
            weight=weight,
        )
        _shape(s_shapes, "logits", "student", "temperature", 1)
        _shape(t_shapes, "logits", "teacher", "temperature", 1)
        self.temperature = _positive("temperature", temperature)
        self.kd_weight = _non_negative("kd_weight", kd_weight)
        self.student_taps = tuple(dict.fromkeys((*self.student_taps, "logits")))
        self.teacher_taps = tuple(dict.fromkeys((*self.teacher_taps, "logits")))

    def forward(
        self,
        s: Taps,
        t: Taps,
        targets: Tensor,
        epoch: int = 0,
        *,
        index: Tensor | None = None,
        step: int = 0,
        contrast_idx: Tensor | None = None,
    ) -> dict[str, Tensor]:
        out = super().forward(
            s, t, targets, epoch, index=index, step=step, contrast_idx=contrast_idx
        )
        s_logits = _tap(s, "logits", "student")
        t_logits = _tap(t, "logits", "teacher").detach()
        out["kd"] = self.kd_weight * _kl_softened(s_logits, t_logits, self.temperature)
        return out
