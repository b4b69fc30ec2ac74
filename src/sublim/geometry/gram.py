"""Gram-matrix helpers: O(N^2) memory instead of O(N*D), float32 matmuls, no per-pair loops."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

ROW_BLOCK = 512
EIG_FLOAT64_MAX = 2048
COL_BLOCK = 8192  # columns centred at a time


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


def eigvals_desc(centered: Tensor, rank: int) -> Tensor:
    """The `rank` largest eigenvalues (descending, float64, >= 0) of a centered Gram: the
    variances along the principal axes of the samples.

    Up to EIG_FLOAT64_MAX samples in float64; above, in float32 and on one thread: LAPACK's
    tridiagonal reduction is memory-bound, and on 2 shared cores two threads ran 3x slower.
    """
    if centered.shape[-1] <= EIG_FLOAT64_MAX:
        ev = torch.linalg.eigvalsh(centered.double())
    else:
        with one_thread():
            ev = torch.linalg.eigvalsh(centered.float())
    return ev.flip(0)[:rank].double().clamp_min(0.0)


def add_class_gram(gram64: Tensor, feats: Tensor) -> None:
    """gram64 += X_c X_c^T, X_c = `feats` minus its row mean: centred and multiplied in float32 as
    the reference's SVD of centred float32 features is (its null variances come out ~1e-15 of
    the largest, and so do these), accumulated over column slices in float64."""
    x = feats.float()
    x = x - x.mean(0, keepdim=True, dtype=torch.float64).float()
    gram64 += (x @ x.T).double()


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread inside (restored after): for small or memory-bound work, more threads
    only add synchronisation, and cost seconds when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
