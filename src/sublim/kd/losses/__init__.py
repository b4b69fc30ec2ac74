"""Classical and feature distillation methods as registered components.

A `Distiller` reads the student's and the teacher's named taps (see `kd.models`: "stem",
"stage1".."stageN", "stageN_pre", "pool", "logits") and returns a dict of named scalar losses,
each already multiplied by its weight. The training loop never forks per method: it asks the
distiller which taps to compute (`student_taps`, `teacher_taps`), calls it, and adds the losses
to the cross-entropy with `combine`.

Conventions shared by every method:

* Shapes are per sample: feature maps (C, H, W), pool (D,), logits (K,). Channel counts and
  spatial sizes come from the shapes given at construction, never from constants.
* The teacher side never receives a gradient: teacher taps are detached and every computation
  on them runs under `torch.no_grad()`.
* `default_weight` and `ce_weight` are the loss and cross-entropy weights of the reference recipe
  (RepDistiller's `-b`/`-r`, mdistiller's FEAT_WEIGHT/CE_WEIGHT); `weight=` overrides the first.
  `combine(ce, losses, alpha=None, ce_weight=d.ce_weight)` reproduces the reference recipe;
  `combine(ce, losses, alpha=0.5)` with distillers built with `weight=1.0` is the experiment
  notes' `(1 - alpha) * CE + alpha * distill_loss`.
* When two feature maps that are compared have different spatial sizes, the larger one is
  adaptive-average-pooled to the smaller one's size (RepDistiller's AT/NST/FT, SimKD).
* Parameters a method adds (regressor, translator, paraphraser, projector) live in the
  distiller; move it to the device with `.to(device)` and give its parameters to the optimiser.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..config import INIT_EPOCHS, METHOD_NAMES
from .base import Distiller, DistillerConfigError, Shapes, Taps
from .contrast import ContrastMemory, draw_contrast, nce_loss
from .correlation import CC, KDSVD, cc_gaussian_loss, cc_repdistiller_loss, kdsvd_losses
from .crd import CRD, CRDKD
from .features import AT, FT, ConvReg, FitNets, Paraphraser, attention_map
from .info import PKT, VID, pkt_loss, vid_nll
from .layers import STANDARD_LAYERS, FeatureKD, cosine_matrix, layer_tap
from .logits import DKD, KD, KDDOT, LogitStd, zscore
from .ofd import OFD, ofd_feat_loss, ofd_margin
from .registry import (
    METHODS,
    check_method_params,
    create_distiller,
    explicit_params,
    parameter_names,
)
from .relations import NST, RKD, SP, pairwise_distances, similarity_matrix, triplet_cosines
from .reviewkd import ABF, ReviewKD, hcl_loss
from .simkd import SimKD
from .stagewise import AB, FSP, ab_level_loss, fsp_matrices, fsp_matrix

__all__ = [
    "METHODS",
    "CRD",
    "CRDKD",
    "ContrastMemory",
    "draw_contrast",
    "nce_loss",
    "AB",
    "FSP",
    "ab_level_loss",
    "fsp_matrices",
    "fsp_matrix",
    "AT",
    "CC",
    "DKD",
    "KDDOT",
    "KDSVD",
    "PKT",
    "VID",
    "OFD",
    "ReviewKD",
    "ABF",
    "FT",
    "KD",
    "NST",
    "RKD",
    "SP",
    "ConvReg",
    "FeatureKD",
    "STANDARD_LAYERS",
    "cosine_matrix",
    "layer_tap",
    "Distiller",
    "DistillerConfigError",
    "FitNets",
    "LogitStd",
    "Paraphraser",
    "Shapes",
    "SimKD",
    "Taps",
    "attention_map",
    "cc_gaussian_loss",
    "cc_repdistiller_loss",
    "kdsvd_losses",
    "pkt_loss",
    "vid_nll",
    "hcl_loss",
    "ofd_feat_loss",
    "ofd_margin",
    "check_method_params",
    "combine",
    "create_distiller",
    "explicit_params",
    "pairwise_distances",
    "parameter_names",
    "similarity_matrix",
    "triplet_cosines",
    "zscore",
]

# kd.config checks method names without importing torch; its parameters come from .registry
if tuple(METHODS) != METHOD_NAMES:
    raise ImportError("kd.losses.METHODS and kd.config.METHOD_NAMES disagree")
# nor its init stages (which methods accept --init-epochs, and their default length)
if {m: c.init_stage.epochs for m, c in METHODS.items() if c.init_stage} != INIT_EPOCHS:
    raise ImportError("the methods' init_stage and kd.config.INIT_EPOCHS disagree")

# ---------------------------------------------------------------------------------------------
# Combination
# ---------------------------------------------------------------------------------------------


def combine(
    ce: Tensor, losses: Mapping[str, Tensor], alpha: float | None, *, ce_weight: float = 1.0
) -> Tensor:
    """The training loss from the cross-entropy and a distiller's named losses.

    With `alpha`: (1 - alpha) * ce + alpha * sum(losses), the experiment notes' formula (build the
    distiller with weight=1.0 for the notes' raw distill loss). Without: ce_weight * ce +
    sum(losses), the per-method weights of the reference recipe (pass the distiller's
    `ce_weight` to reproduce it; the default 1 keeps the cross-entropy as is)."""
    distill = sum(losses.values(), torch.zeros((), device=ce.device, dtype=ce.dtype))
    if alpha is None:
        return ce_weight * ce + distill
    if not 0.0 <= alpha <= 1.0:
        raise DistillerConfigError("alpha", alpha, "must be in [0, 1]")
    return (1.0 - alpha) * ce + alpha * distill
