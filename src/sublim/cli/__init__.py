"""The `sublim` command line. `main` is the console entry point; see `cli.main` for the parser.

One module per command (`run`, `sweep`, `report`, `kd`, `data`), each with `add_parser` and its
`cmd_*` function; `args` holds the shared parser class and flag value parsers.
"""

from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
