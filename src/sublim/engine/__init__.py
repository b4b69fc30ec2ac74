"""Training and evaluation of teacher -> student runs: configs in, records out."""

from .run import load_data, resolve_device, run, run_many

__all__ = ["load_data", "resolve_device", "run", "run_many"]
