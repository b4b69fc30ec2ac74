"""QualityAccumulator: one layer's features arrive in chunks, only Gram matrices are kept."""

from __future__ import annotations

import torch
from torch import Tensor

from .gram import (
    COL_BLOCK,
    add_class_gram,
    add_gram_lower,
    center_gram,
    eigvals_desc,
    mirror_lower,
)
from .quality import Grams, layer_row


class QualityAccumulator:
    """Streams one layer's features on A (and, when B is not inside A, on B class by class).

    `add` takes the next rows of A for the current column slice (float32, flattened per sample);
    once all |A| rows are in, the slice is centred (its mean in float64) and folded into A's centered
    Gram with float32 matmuls, its mean's projections kept in float64, and dropped. A layer
    wider than the memory budget comes as several slices: the Grams sum over them.
    `b_in_a` gives B's positions inside A (its class spectra then come from A's centered Gram,
    each class block centred again in float64); otherwise `add_class(c, feats)` takes all of B's
    class-c rows for each slice (float32 products of class-centred features, summed over slices
    in float64). Either way small variances come out as the reference's float32 SVD of centred
    features has them (tests/test_quality_reference.py), whatever the features' offset.
    """

    def __init__(
        self,
        labels: Tensor,
        dim: int,
        *,
        n_train: int,
        b_in_a: Tensor | None = None,
        b_labels: Tensor | None = None,
        probe: bool = False,
    ) -> None:
        self.labels = torch.as_tensor(labels).reshape(-1).long()
        self.dim, self.n_train, self.probe = int(dim), int(n_train), probe
        self.b_in_a = b_in_a
        self.b_labels = self.labels[b_in_a] if b_in_a is not None else b_labels
        self.centered = torch.empty(0)  # allocated by the first fold
        self.proj = torch.empty(0, dtype=torch.float64)
        self.mean_sq = 0.0
        self._buf: Tensor | None = None
        self._rows = 0
        self._cols = 0
        self._variances: Tensor | None = None
        self._class_grams: dict[int, Tensor] = {}
        self._class_cols: dict[int, int] = {}
        self.spectra: dict[int, Tensor] = {}

    @property
    def complete(self) -> bool:
        """All columns of A are folded into the Gram."""
        return self._cols == self.dim

    def add(self, feats: Tensor) -> None:
        """Append rows of A (in A's order) for the current column slice."""
        f = feats.reshape(feats.shape[0], -1)
        n = self.labels.numel()
        if self._buf is None:
            self._buf = torch.empty(n, f.shape[1], dtype=torch.float32)
            self._rows = 0
        self._buf[self._rows : self._rows + f.shape[0]] = f
        self._rows += f.shape[0]
        if self._rows == n:
            self._fold()

    def _fold(self) -> None:
        buf, self._buf = self._buf, None
        assert buf is not None
        n, cols = buf.shape
        if self._cols == 0:
            self.centered = torch.zeros(n, n, dtype=torch.float32)
            self.proj = torch.zeros(n, dtype=torch.float64)
        for lo in range(0, cols, COL_BLOCK):  # centre in place, a column block at a time
            x = buf[:, lo : lo + COL_BLOCK]
            mean = x.mean(0, dtype=torch.float64)
            x -= mean.float()
            self.proj += (x @ mean.float()).double()
            self.mean_sq += float(mean @ mean)
        add_gram_lower(self.centered, buf)
        if cols == self.dim and self.dim < n:  # narrow layer: D x D covariance is cheaper
            cov = buf.T.double() @ buf.double()
            self._variances = torch.linalg.eigvalsh(cov).flip(0).clamp_min(0)
        self._cols += cols
        if self.complete:
            mirror_lower(self.centered)

    def add_class(self, c: int, feats: Tensor) -> None:
        """All of B's class-c rows for the current column slice (only when B is not inside A)."""
        f = feats.reshape(feats.shape[0], -1)
        g = self._class_grams.setdefault(
            c, torch.zeros(f.shape[0], f.shape[0], dtype=torch.float64)
        )
        add_class_gram(g, f)
        self._class_cols[c] = self._class_cols.get(c, 0) + f.shape[1]
        if self._class_cols[c] == self.dim:
            self.spectra[c] = eigvals_desc(self._class_grams.pop(c), min(f.shape[0], self.dim))

    def result(self) -> dict[str, float]:
        """The layer's row of metrics; frees the Grams."""
        if not self.complete:
            raise RuntimeError(f"layer has {self._cols} of {self.dim} columns")
        assert self.b_labels is not None
        classes = self.b_labels.unique(sorted=True).tolist()
        if self._class_grams:
            short = {c: self._class_cols[c] for c in self._class_grams}
            raise RuntimeError(f"classes of B lack columns (of {self.dim}): {short}")
        if self.b_in_a is not None:  # B's class blocks of A's centered Gram, class-centred
            for c in classes:
                pos = self.b_in_a[self.b_labels == c]
                block = center_gram(self.centered[pos][:, pos].double())
                self.spectra[c] = eigvals_desc(block, min(pos.numel(), self.dim))
        per_class = [int((self.b_labels == c).sum()) for c in classes]
        row = layer_row(
            Grams(self.centered, self.proj, self.mean_sq),
            self.labels,
            [self.spectra[c] for c in classes],
            per_class,
            dim=self.dim,
            n_train=self.n_train,
            variances=self._variances,
            probe=self.probe,
        )
        self.centered = torch.empty(0)
        return row
