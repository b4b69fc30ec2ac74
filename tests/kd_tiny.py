"""The tiny KD experiment several tests train: resnet8 on the first 200 bundled MNIST images,
one epoch (seconds on a CPU), and the small analysis settings they score it with."""

from __future__ import annotations

from pathlib import Path

from sublim.kd.analyze import Settings
from sublim.kd.config import KDConfig

SMALL = Settings(per_class_a=8, per_class_b=8)


def tiny(out: Path, **kw: object) -> KDConfig:
    """resnet8 on the first 200 MNIST images, one epoch; `kw` overrides any field."""
    fields = dict(
        dataset="mnist",
        data_dir=str(out / "none"),
        outdir=str(out),
        model="resnet8",
        epochs=1,
        batch_size=100,
        train_limit=200,
        test_limit=100,
        device="cpu",
    )
    return KDConfig(**{**fields, **kw})
