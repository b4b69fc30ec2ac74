"""Training and evaluation of teacher -> student runs: configs in, records out."""

from .batch import run_group
from .run import load_data, resolve_device, run

run_many = run_group  # DESIGN.md's name: what [run(c) for c in configs] gives, batched

__all__ = ["load_data", "resolve_device", "run", "run_group", "run_many"]
