"""QualityAccumulator: one layer's features arrive in chunks, only Gram matrices are kept."""

from __future__ import annotations

import torch
from torch import Tensor

from .gram import add_gram_lower, centered_spectrum, mirror_lower
from .quality import layer_row


class QualityAccumulator:
    """Streams one layer's features on A (and, when B is not inside A, on B class by class).

    `add` takes the next rows of A for the current column slice (float32, flattened per sample);
    once all |A| rows are in, the slice is folded into the Gram with float32 matmuls and dropped.
    A layer wider than the memory budget comes as several slices: the Gram sums over them.
    `b_in_a` gives B's positions inside A (its per-class spectra then come from A's Gram);
    otherwise `add_class(c, feats)` takes all of B's class-c rows for each slice.
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
        self.gram = torch.empty(0)  # allocated by the first fold
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
        n = buf.shape[0]
        if self._cols == 0:
            self.gram = torch.zeros(n, n, dtype=torch.float32)
        add_gram_lower(self.gram, buf)
        if buf.shape[1] == self.dim and self.dim < n:  # narrow layer: D x D covariance is cheaper
            centered = buf - buf.mean(0, keepdim=True)
            cov = centered.T.double() @ centered.double()
            self._variances = torch.linalg.eigvalsh(cov).flip(0).clamp_min(0)
        self._cols += buf.shape[1]
        if self.complete:
            mirror_lower(self.gram)

    def add_class(self, c: int, feats: Tensor) -> None:
        """All of B's class-c rows for the current column slice (only when B is not inside A)."""
        f = feats.reshape(feats.shape[0], -1).float()
        g = self._class_grams.setdefault(c, torch.zeros(f.shape[0], f.shape[0]))
        add_gram_lower(g, f)
        self._class_cols[c] = self._class_cols.get(c, 0) + f.shape[1]
        if self._class_cols[c] == self.dim:
            del self._class_grams[c]
            self.spectra[c] = centered_spectrum(mirror_lower(g), min(f.shape[0], self.dim))

    def result(self) -> dict[str, float]:
        """The layer's row of metrics; frees the Gram."""
        if not self.complete:
            raise RuntimeError(f"layer has {self._cols} of {self.dim} columns")
        classes = self.labels.unique(sorted=True).tolist()
        if self.b_in_a is not None:
            for c in classes:
                pos = self.b_in_a[self.b_labels == c]
                self.spectra[c] = centered_spectrum(
                    self.gram[pos][:, pos], min(pos.numel(), self.dim)
                )
        per_class = [int((self.b_labels == c).sum()) for c in classes]
        row = layer_row(
            self.gram,
            self.labels,
            [self.spectra[c] for c in classes],
            per_class,
            dim=self.dim,
            n_train=self.n_train,
            variances=self._variances,
            probe=self.probe,
        )
        self.gram = torch.empty(0)
        return row
