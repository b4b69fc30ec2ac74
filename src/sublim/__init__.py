"""sublim: teacher -> student transfer experiments (subliminal learning, distillation).

Python API: `ExperimentConfig` (one run, frozen and validated) and `run(config)`, which returns
the run's records without writing anything; `sublim.store.RunStore` writes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from .config import ExperimentConfig
    from .engine import run_many
    from .records import RunRecord


def run(config: ExperimentConfig, progress: bool = False) -> RunRecord:
    """Run one experiment and return its RunRecord (see sublim.engine.run)."""
    from .engine import run as _run

    return _run(config, progress=progress)


def __getattr__(name: str) -> Any:
    # Lazy, so that `import sublim.store` (workers, analysis) does not load the config layer.
    if name == "ExperimentConfig":
        from .config import ExperimentConfig

        return ExperimentConfig
    if name == "run_many":
        from .engine import run_many

        return run_many
    raise AttributeError(name)


__all__ = ["ExperimentConfig", "__version__", "run", "run_many"]
