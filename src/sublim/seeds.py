"""Derived seeds: the only source of randomness in sublim.

Every random stream (a model's init, an A/B layer, shuffling, noise, perturbations) gets its own
seed from the base seed and a purpose label, so changing one thing never shifts another and
results do not depend on execution order or on how runs are grouped.
"""

from __future__ import annotations

import hashlib

import torch


def derive(seed: int, *purpose: object) -> int:
    """Return a 63-bit seed determined by `seed` and the purpose labels (stable across runs)."""
    text = "\x1f".join([str(int(seed)), *(str(p) for p in purpose)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(seed: int, *purpose: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded with `derive(seed, *purpose)`."""
    g = torch.Generator(device=device)
    g.manual_seed(derive(seed, *purpose))
    return g
