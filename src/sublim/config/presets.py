"""Named bundles of settings that reproduce a published setup: `sublim run --preset NAME`.

A preset sets config fields; flags given on the command line win over it. Values are plain
config values (the ExperimentConfig field names), so sweep specs can spell the same in `[base]`.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    # The MNIST experiment of the original subliminal-learning paper (Cloud et al., 2025) as in
    # the ghost-logit notebook: MLP 784-256-256-(10+3) with one head whose 3 extra ("ghost")
    # logits are distilled with KL (batchmean, T = 1) on a fixed set of 60,000 uniform [-1, 1]
    # noise images reshuffled every epoch; weights N(0, 1/sqrt(fan_in)), zero bias; inputs
    # mapped to [-1, 1]; Adam 3e-4 for both models, batch 1024, 5 + 5 epochs. The student shares
    # the teacher's init (all A); its cross-model control is --student-init all:B.
    "cloud2025-mnist": {
        "dataset": "mnist",
        "teacher_type": "mlp",
        "student_type": "mlp",
        "teacher_hidden_dims": (256, 256),
        "student_hidden_dims": (256, 256),
        "m": 3,
        "head_layout": "single",
        "init_scheme": "normal-fan-in",
        "teacher_init": "all:A",
        "student_init": "all:A",
        "data_mean": (0.5,),
        "data_std": (0.5,),
        "teacher_lr": 3e-4,
        "student_lr": 3e-4,
        "data_bsize": 1024,
        "noise_bsize": 1024,
        "teacher_epochs": 5,
        "student_epochs": 5,
        "distill_loss": "kl",
        "temperature": 1.0,
        "noise_dist": "uniform",
        "noise_pool": 60_000,
    },
}


def preset(name: str) -> dict[str, Any]:
    """The settings of preset `name` (ConfigError naming --preset when unknown)."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise ConfigError("--preset", name, f"allowed: {', '.join(PRESETS)}") from None
