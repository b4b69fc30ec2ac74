"""The `sublim` parser (run | sweep | report | kd | data) and `main()`, the console entry point.

Every user error becomes one line `sublim: error: ...` on stderr and exit status 2, with no
traceback and no output files. Imports point one way: main -> one module per command -> args.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import UserError
from . import data, kd, report, run, sweep
from .args import PROG, Parser, explicit_dests


def build_parser() -> argparse.ArgumentParser:
    """The `sublim` parser with its subcommands."""
    parser = Parser(
        prog=PROG,
        description="Teacher -> student transfer experiments (subliminal learning).",
    )
    parser.add_argument("--version", action="version", version=f"sublim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    parser.run_parser = run.add_parser(sub)  # type: ignore[attr-defined]
    sweep.add_parser(sub)
    report.add_parser(sub)
    kd.add_parser(sub, Parser)
    data.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(argv)
    if ns.command == "run":
        ns.explicit = explicit_dests(parser.run_parser, argv)  # type: ignore[attr-defined]
    if ns.command is None:
        parser.print_help()
        return 2
    try:
        if ns.command == "run":
            return run.cmd_run(ns)
        if ns.command == "sweep":
            return sweep.cmd_sweep(ns)
        if ns.command == "report":
            return report.cmd_report(ns)
        if ns.command == "kd":
            return kd.cmd_kd(ns)
        return data.cmd_data(ns)
    except UserError as exc:
        sys.stderr.write(f"{PROG}: error: {' '.join(str(exc).split())}\n")
        return 2
    except KeyboardInterrupt:
        if ns.command == "kd":
            sys.stderr.write(
                f"{PROG}: interrupted; rerun the same command to resume from the "
                "last finished epoch\n"
            )
        else:
            sys.stderr.write(f"{PROG}: interrupted; nothing was written for the unfinished run\n")
        return 130
    except BrokenPipeError:  # `sublim ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail
        return 141
