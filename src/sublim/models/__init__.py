"""Split-head models, their initialisation sources and trainability."""

from .build import build_model, layer_seed, model_seed, parameter_counts, reset_layer
from .net import SplitHeadNet, mlp_spec

__all__ = [
    "SplitHeadNet",
    "build_model",
    "layer_seed",
    "mlp_spec",
    "model_seed",
    "parameter_counts",
    "reset_layer",
]
