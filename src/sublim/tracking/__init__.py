"""Experiment tracking in TensorBoard and MLflow (`pip install 'sublim[tracking]'`).

`--track tensorboard:DIR` / `--track mlflow[:URI]` (and `track = ...` in sweep specs) are parsed
here into targets; the CLI makes a `TrackSpec` and gives it to the driver: `RunsTracker` for
sublim runs and sweeps (one tracked run per sublim run, written in batches), `ExperimentTracker`
for a KD experiment (a step per epoch, continued on resume). The engine never imports this
package, and tracking never enters a config hash: it does not change results. Backend modules
import their library lazily, so `sublim` works without the extra.
"""

from __future__ import annotations

from .targets import INSTALL, TrackTarget, parse_target, parse_targets
from .trackers import (
    TRACKING_FILE,
    ExperimentTracker,
    RunsTracker,
    TrackSpec,
    epoch_values,
    read_json,
)

__all__ = [
    "INSTALL",
    "TRACKING_FILE",
    "ExperimentTracker",
    "RunsTracker",
    "TrackSpec",
    "TrackTarget",
    "epoch_values",
    "parse_target",
    "parse_targets",
    "read_json",
]
