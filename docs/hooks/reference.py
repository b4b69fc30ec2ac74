"""The documentation's reference pages, generated at build time from the code itself.

MkDocs loads this file as a hook (`hooks:` in mkdocs.yml); `on_files` adds the pages without
writing into `docs/`. The same functions are imported by `tests/test_docs_reference.py`, which
checks that every CLI flag, spec key, method parameter and output column appears. Nothing here
is written by hand: the flags come from the argparse parsers that `--help` prints, the spec keys
from the config dataclasses and the spec readers, the columns from `sublim.store.schema`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import json
import re
import tokenize
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


# ---------------------------------------------------------------------------------------------
# Small Markdown helpers
# ---------------------------------------------------------------------------------------------


def _text(text: object) -> str:
    """Text made safe for Markdown: a bare <outdir> stays visible instead of becoming an HTML
    tag (code spans are left alone: Markdown shows their text as it is)."""
    parts = re.split(r"(`[^`]*`)", str(text))
    return "".join(
        p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in parts
    )


def _cell(text: object) -> str:
    """Text made safe for one Markdown table cell."""
    return _text(" ".join(str(text).split())).replace("|", "\\|")


def _code(text: object) -> str:
    """Inline code that survives backticks inside it."""
    text = str(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _anchor(text: str) -> str:
    return "-".join(text.lower().replace("_", "-").split())


# ---------------------------------------------------------------------------------------------
# The command line, from the parsers `sublim --help` prints
# ---------------------------------------------------------------------------------------------


def _sub_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def iter_parsers(
    parser: argparse.ArgumentParser | None = None,
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(command path, one-line help, parser) for `sublim` and every subcommand, depth first."""
    if parser is None:
        from sublim.cli.main import build_parser

        parser = build_parser()
        yield "sublim", parser.description or "", parser
    sub = _sub_action(parser)
    if sub is None:
        return
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    for name, child in sub.choices.items():
        yield child.prog, helps.get(name, ""), child
        yield from iter_parsers(child)


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    return parser._get_formatter()._expand_help(action)


def _default_text(action: argparse.Action) -> str:
    if action.option_strings and action.nargs == 0:
        return ""  # switches: present or not
    if action.default in (None, argparse.SUPPRESS):
        return ""
    return _code(action.default)


def _flag_text(action: argparse.Action) -> str:
    names = ", ".join(_code(o) for o in action.option_strings) or _code(action.dest.upper())
    if action.option_strings and action.nargs != 0:
        metavar = action.metavar or action.dest.upper()
        if isinstance(metavar, tuple):
            metavar = " ".join(metavar)
        names += f" {_code(metavar)}"
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        names += "<br>one of " + ", ".join(_code(c) for c in action.choices)
    if action.required:
        names += " (required)"
    return names


def cli_flags() -> dict[str, set[str]]:
    """Command path -> every option string it accepts (for the documentation test)."""
    out: dict[str, set[str]] = {}
    for path, _, parser in iter_parsers():
        out[path] = {o for a in parser._actions for o in a.option_strings if a.dest != "help"}
    return out


def cli_page() -> str:
    """Every command with its usage and its flags, grouped as in `--help`."""
    parts = [
        "# Command line\n\n",
        "Generated from the same argparse parsers that `sublim ... --help` prints, at every "
        "build of this site; a flag cannot be added without appearing here. Every command "
        "exits with status 2 and one line naming the flag, the value and what is allowed when "
        "its input is wrong.\n\n",
    ]
    for path, one_line, parser in iter_parsers():
        depth = min(path.count(" ") + 1, 3)
        parts.append(f"{'#' * (depth + 1)} `{path}`\n\n")
        if one_line and path != "sublim":
            parts.append(f"*{_cell(one_line)}*\n\n")
        if parser.description:
            parts.append(_text(" ".join(parser.description.split())) + "\n\n")
        formatter = parser._get_formatter()
        formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, "")
        usage = formatter.format_help().strip()
        parts.append(f"```text\n{usage}\n```\n\n")
        sub = _sub_action(parser)
        if sub is not None:
            rows = [
                [f"[`{child.prog}`](#{_anchor(child.prog)})", _cell(a.help or "")]
                for a in sub._choices_actions
                for child in [sub.choices[a.dest]]
            ]
            parts.append(_table(["command", "what it does"], rows) + "\n")
        for group in parser._action_groups:
            actions = [
                a
                for a in group._group_actions
                if not isinstance(a, argparse._SubParsersAction) and a.help != argparse.SUPPRESS
            ]
            actions = [a for a in actions if "-h" not in a.option_strings]
            if not actions:
                continue
            title = group.title or "options"
            title = "flags" if title in ("options", "optional arguments") else title
            parts.append(f"**{title}**\n\n")
            rows = [
                [_flag_text(a), _default_text(a), _cell(_help_text(parser, a))] for a in actions
            ]
            parts.append(_table(["flag", "default", "meaning"], rows) + "\n")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Spec keys and config fields, from the dataclasses, their comments and the flags' help
# ---------------------------------------------------------------------------------------------


def field_comments(cls: type) -> dict[str, str]:
    """A dataclass field -> the comment written on its line or on the lines just above it."""
    source = inspect.getsource(cls)
    pending: list[str] = []
    out: dict[str, str] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    lines = source.splitlines()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(comments.get(number, ""))
            continue
        name = stripped.split(":", 1)[0].strip() if ":" in stripped else ""
        if name in names and name not in out:
            text = " ".join(pending)
            inline = comments.get(number)
            if inline is None:  # a value spread over lines: its comment is inside
                end = number
                while end < len(lines) and lines[end - 1].rstrip().endswith(("(", ",")):
                    end += 1
                    inline = inline or comments.get(end)
            out[name] = " ".join(t for t in (text, inline or "") if t)
        if stripped:  # a comment block belongs to the field right below it only
            pending = []
    return out


def _flag_helps(parser: argparse.ArgumentParser) -> dict[str, tuple[str, str]]:
    """dest -> (first option string, expanded help)."""
    out = {}
    for action in parser._actions:
        if action.option_strings and action.dest not in out:
            out[action.dest] = (action.option_strings[0], _help_text(parser, action))
    return out


def _type_text(tp: Any) -> str:
    text = tp if isinstance(tp, str) else getattr(tp, "__name__", None) or str(tp)
    return str(text).replace("typing.", "")


def config_rows(
    cls: type, flag_helps: dict[str, tuple[str, str]], aliases: dict[str, str] | None = None
) -> list[tuple[str, str, Any, str, str]]:
    """(field, type, default, flag, meaning) for every field of a config dataclass."""
    comments = field_comments(cls)
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        dest = (aliases or {}).get(f.name, f.name)
        flag, help_text = flag_helps.get(dest, ("", ""))
        meaning = help_text or comments.get(f.name, "")
        rows.append((f.name, _type_text(hints.get(f.name, f.type)), default, flag, meaning))
    return rows


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, bool):
        return _code(str(value).lower())
    if isinstance(value, list | dict):
        return _code(json.dumps(value))
    return _code(json.dumps(value) if isinstance(value, str) else value)


@functools.cache
def _parser_for(path: str) -> argparse.ArgumentParser:
    """The parser of one command path, e.g. "sublim kd distill"."""
    return {p: parser for p, _, parser in iter_parsers()}[path]


def subliminal_spec_rows() -> tuple[dict[str, str], list[tuple[str, str, Any, str, str]]]:
    """A subliminal sweep spec: its top-level keys and the config fields its tables may set."""
    from sublim.config import ExperimentConfig
    from sublim.sweep.spec import TOP_KEY_HELP

    return dict(TOP_KEY_HELP), config_rows(ExperimentConfig, _flag_helps(_parser_for("sublim run")))


def kd_spec_rows() -> tuple[dict[str, str], list[tuple[str, str, Any, str, str]]]:
    """A KD sweep spec: its top-level keys and the KDConfig fields its tables may set."""
    from sublim.kd.config import KDConfig
    from sublim.kd.sweep import TOP_KEY_HELP

    helps = {
        **_flag_helps(_parser_for("sublim kd distill")),
        **_flag_helps(_parser_for("sublim kd train-teacher")),
    }
    helps["model"] = helps.get("student", helps.get("model", ("", "")))
    return dict(TOP_KEY_HELP), config_rows(KDConfig, helps)


def _spec_section(title: str, keys: dict[str, str], rows: list, owned: tuple[str, ...]) -> str:
    parts = [f"## {title}\n\n### Top-level keys\n\n"]
    parts.append(_table(["key", "meaning"], [[_code(k), _cell(v)] for k, v in keys.items()]))
    parts.append("\n### Fields\n\n")
    parts.append(
        "Each may appear in `[base]`, in a `[grid]` or `[zip]` axis (as a list of values) and "
        "in a condition's table. Each meaning starts with the command-line flag that sets the "
        "same field, when there is one.\n\n"
    )
    table = []
    for name, tp, default, flag, meaning in rows:
        if name in owned:
            meaning = f"set by the sweep, not by the spec. {meaning}"
        if flag:
            meaning = f"{_code(flag)}: {_cell(meaning)}"
        else:
            meaning = _cell(meaning)
        field_cell = f"{_code(name)}<br><small>{_cell(tp)}</small>"
        table.append([field_cell, _value(default), meaning])
    parts.append(_table(["field", "default", "flag: meaning"], table) + "\n")
    return "".join(parts)


def spec_page() -> str:
    """Every sweep-spec key, for `sublim sweep` and `sublim kd sweep`."""
    from sublim.kd.sweep import OWNED
    from sublim.sweep.spec import SWEEP_OWNED

    parts = [
        "# Sweep specs\n\n",
        "Generated from the config dataclasses (types and defaults), the comments written "
        "beside their fields and the help of the flag that sets each field. A key that is not "
        "listed here is refused in one line naming the file, the key and what is allowed.\n\n",
    ]
    keys, rows = subliminal_spec_rows()
    parts.append(_spec_section("`sublim sweep` specs", keys, rows, SWEEP_OWNED))
    keys, rows = kd_spec_rows()
    parts.append(_spec_section("`sublim kd sweep` specs", keys, rows, OWNED))
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# KD methods and their parameters, from the registry's declarations
# ---------------------------------------------------------------------------------------------


def method_rows() -> dict[str, list[tuple[str, str, Any, str]]]:
    """method -> (parameter, what it accepts, default, meaning) for every registered method."""
    from sublim.kd.losses.registry import METHODS, declared, describe

    out = {}
    for name, cls in METHODS.items():
        helps = getattr(cls, "param_help", {})
        out[name] = [
            (p, describe(tp), default, helps.get(p, ""))
            for p, (tp, default) in declared(cls).items()
        ]
    return out


def methods_page() -> str:
    """Every KD method: its docstring and its parameters (`--method-params`, `params` in specs)."""
    from sublim.kd.losses.registry import METHODS

    parts = [
        "# Distillation methods\n\n",
        "Generated from the method registry (`sublim.kd.losses`): each method's docstring and "
        "its declared parameters, which `--method-params` and a spec's `params` table accept "
        "and check (a wrong name or type is one line naming the method, the parameter and "
        "what it accepts).\n\n",
    ]
    rows = method_rows()
    for name, cls in METHODS.items():
        parts.append(f"## `{name}`\n\n")
        doc = _text(inspect.cleandoc(cls.__doc__ or ""))
        parts.append(doc + "\n\n")
        table = [[_code(p), _cell(acc), _value(d), _cell(m)] for p, acc, d, m in rows[name]]
        parts.append(_table(["parameter", "accepts", "default", "meaning"], table) + "\n")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Output files and columns, from sublim.store.schema
# ---------------------------------------------------------------------------------------------


def outputs_page() -> str:
    """Every output file and its columns, in order, with their meaning."""
    from sublim import outputs as schema  # the files, their columns and meanings

    parts = [
        "# Output files and columns\n\n",
        "Generated from `sublim.outputs`: the column lists come from "
        "`sublim.store.schema`, where they live once for every writer and reader, and tests "
        "hold every file sublim writes to this list. Column names and their order are a contract with analysis "
        "scripts: the reference's columns come first, in its order, then sublim's additions.\n\n",
    ]
    for spec in schema.OUTPUT_FILES:
        parts.append(f"## `{spec.name}`\n\n{_text(spec.what)}\n\n")
        if spec.columns:
            rows = [
                [str(i), _code(c), _cell(spec.help.get(c) or schema.COLUMN_HELP.get(c, ""))]
                for i, c in enumerate(spec.columns, start=1)
            ]
            parts.append(_table(["#", "column", "meaning"], rows) + "\n")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# The notebook, rendered as a page (its code stored without outputs; CI executes it)
# ---------------------------------------------------------------------------------------------


def notebook_page(path: Path = NOTEBOOK) -> str:
    """The quick-start notebook as Markdown: its Markdown cells, its code cells as code."""
    nb = json.loads(path.read_text())
    parts = [
        "!!! note\n    This page is `notebooks/quickstart.ipynb`, rendered. Open it in "
        "Jupyter to run it; CI executes it on every change.\n\n"
    ]
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            parts.append(text + "\n\n")
        elif cell["cell_type"] == "code":
            parts.append(f"```python\n{text}\n```\n\n")
    return "".join(parts)


PAGES = {
    "reference/cli.md": cli_page,
    "reference/spec.md": spec_page,
    "reference/methods.md": methods_page,
    "reference/outputs.md": outputs_page,
    "tutorials/notebook.md": notebook_page,
}


def on_files(files: Any, config: Any) -> Any:
    """MkDocs hook: add the generated pages to the site."""
    from mkdocs.structure.files import File

    for uri, make in PAGES.items():
        files.append(File.generated(config, uri, content=make()))
    return files
