"""Gram-matrix helpers: O(N^2) memory instead of O(N*D), float32 matmuls, no per-pair loops."""

from __future__ import annotations

import torch
from torch import Tensor

ROW_BLOCK = 512
EIG_FLOAT64_MAX = 2048


def add_gram_lower(gram: Tensor, feats: Tensor, block: int = ROW_BLOCK) -> None:
    """gram[i, :i_block_end] += feats feats^T by row blocks: the lower triangle and the diagonal
    blocks only, about half the flops of feats @ feats.T. Call `mirror_lower` once at the end."""
    n = feats.shape[0]
    for s in range(0, n, block):
        e = min(s + block, n)
        gram[s:e, :e].addmm_(feats[s:e], feats[:e].T)


def mirror_lower(gram: Tensor, block: int = ROW_BLOCK) -> Tensor:
    """Copy the lower triangle (as written by `add_gram_lower`) onto the upper one, in place."""
    n = gram.shape[0]
    for s in range(0, n, block):
        e = min(s + block, n)
        gram[s:e, e:] = gram[e:, s:e].T
    return gram


def gram(feats: Tensor) -> Tensor:
    """Uncentered Gram F F^T of the rows of `feats` (flattened per sample), float32."""
    f = feats.reshape(feats.shape[0], -1).float()
    g = torch.zeros(f.shape[0], f.shape[0], dtype=torch.float32)
    add_gram_lower(g, f)
    return mirror_lower(g)


def center_gram(g: Tensor) -> Tensor:
    """H G H with H = I - 11^T/n: the Gram of the mean-centered features (a new tensor)."""
    row = g.mean(dim=-1, keepdim=True)
    out = g - row
    out -= row.transpose(-1, -2)
    out += row.mean(dim=-2, keepdim=True)
    return out


def centered_spectrum(g: Tensor, rank: int) -> Tensor:
    """Variances along the principal axes (descending, `rank` values, float64) of the samples whose
    uncentered Gram is `g`: the squared singular values of the centered feature matrix. Solved in
    float64 up to EIG_FLOAT64_MAX samples, above in float32 (less time and memory)."""
    dtype = torch.float64 if g.shape[-1] <= EIG_FLOAT64_MAX else torch.float32
    ev = torch.linalg.eigvalsh(center_gram(g.to(dtype))).flip(0)[:rank]
    return ev.double().clamp_min(0.0)
