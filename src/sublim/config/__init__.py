"""The configuration layer: what one run is, parsed and validated at the boundary.

`experiment` holds `ExperimentConfig` (one subliminal-learning run, frozen, with its canonical
hash); the other modules parse and check its structured fields: `archspec` (CNN specs),
`augmentspec` (augmentation), `layerconf` (per-layer init and trainability), `perturbspec`
(weight perturbations) and `presets` (named bundles of settings). Nothing here imports the
engine, the store or anything above them.
"""

from __future__ import annotations

from .experiment import (
    BASE_CLASSES,
    CLASS_SELECTIONS,
    DATASETS,
    DISTILL_LOSSES,
    EMNIST_SPLITS,
    HEAD_LAYOUTS,
    IMAGE_SUFFIXES,
    INIT_SCHEMES,
    INPUT_SHAPE,
    INPUT_SHAPES,
    MODEL_TYPES,
    NOISE_DISTS,
    ExperimentConfig,
    flag,
)

__all__ = [
    "BASE_CLASSES",
    "CLASS_SELECTIONS",
    "DATASETS",
    "DISTILL_LOSSES",
    "EMNIST_SPLITS",
    "HEAD_LAYOUTS",
    "IMAGE_SUFFIXES",
    "INIT_SCHEMES",
    "INPUT_SHAPE",
    "INPUT_SHAPES",
    "MODEL_TYPES",
    "NOISE_DISTS",
    "ExperimentConfig",
    "flag",
]
