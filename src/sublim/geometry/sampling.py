"""Class-balanced sample sets A and B for the layer statistics (KD_wo_CE spec section 2.1)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import seeds

A_TOTAL = 5000  # |A| = floor(A_TOTAL / C) per class
B_CAP = 500  # B = min(B_CAP, floor(|X| / C)) per class


def balanced_subsets(
    labels: Tensor,
    num_classes: int,
    seed: int,
    *,
    per_class_a: int | None = None,
    per_class_b: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Index tensors (A, B) into `labels`, class-major, drawn from `seed` (the reference was unseeded).

    A has floor(5000/C) per class, B min(500, floor(N/C)); a class with fewer samples gives all it
    has. Both are prefixes of one seeded permutation per class, so the smaller set lies inside the
    larger one (for CIFAR-10 A == B; for CIFAR-100 A is inside B).
    """
    labels = torch.as_tensor(labels).reshape(-1).long()
    n_a = A_TOTAL // num_classes if per_class_a is None else per_class_a
    n_b = min(B_CAP, labels.numel() // num_classes) if per_class_b is None else per_class_b
    gen = torch.Generator().manual_seed(seeds.derive(seed, "geometry", "balanced_subsets"))
    a, b = [], []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).reshape(-1)
        perm = members[torch.randperm(members.numel(), generator=gen)]
        a.append(perm[:n_a])
        b.append(perm[:n_b])
    return torch.cat(a), torch.cat(b)
