"""The generated reference documents everything: every flag, spec key and method parameter.

The pages come from docs/hooks/reference.py (the MkDocs hook); a new flag, config field or
method parameter without a meaning fails here, not in a reader's hands.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_reference():
    spec = importlib.util.spec_from_file_location(
        "docs_reference", ROOT / "docs/hooks/reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("docs_reference", module)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()


@pytest.fixture(scope="module")
def cli_page() -> str:
    return ref.cli_page()


def test_every_command_and_flag_is_in_the_cli_reference(cli_page: str) -> None:
    flags = ref.cli_flags()
    assert {"sublim run", "sublim sweep", "sublim kd distill", "sublim kd analyze"} <= set(flags)
    for path, options in flags.items():
        section = cli_page.split(f"`{path}`\n", 1)
        assert len(section) == 2, f"no section for {path}"
        body = re.split(r"\n#{2,4} `sublim", section[1], maxsplit=1)[0]
        for option in options:
            assert f"`{option}`" in body, f"{path} {option} is not documented"


def test_every_flag_has_help() -> None:
    for path, _, parser in ref.iter_parsers():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert ref._help_text(parser, action), f"{path} {action.option_strings}: no help"


def test_flag_defaults_match_help_output(capsys: pytest.CaptureFixture[str]) -> None:
    """The page and `--help` come from one parser: the help text of a flag is in both."""
    from sublim.cli.main import main

    with pytest.raises(SystemExit):
        main(["kd", "distill", "--help"])
    help_out = " ".join(capsys.readouterr().out.split())
    for path, _, parser in ref.iter_parsers():
        if path != "sublim kd distill":
            continue
        for action in parser._actions:
            text = " ".join(ref._help_text(parser, action).split())
            if text:
                assert text[:40] in help_out


@pytest.mark.parametrize("which", ["subliminal", "kd"])
def test_every_spec_key_and_field_has_a_meaning(which: str) -> None:
    keys, rows = ref.subliminal_spec_rows() if which == "subliminal" else ref.kd_spec_rows()
    page = ref.spec_page()
    for key, meaning in keys.items():
        assert meaning.strip(), f"{which} spec key {key}: no meaning"
        assert f"`{key}`" in page
    for name, _tp, _default, _flag, meaning in rows:
        assert meaning.strip(), f"{which} config field {name}: no flag help and no comment"
        assert f"`{name}`" in page


def test_spec_readers_accept_exactly_the_documented_top_keys() -> None:
    from sublim.kd import sweep as kd_sweep
    from sublim.sweep import spec

    assert spec.TOP_KEYS == tuple(spec.TOP_KEY_HELP)
    assert kd_sweep.TOP_KEYS == tuple(kd_sweep.TOP_KEY_HELP)


def test_every_method_parameter_is_documented() -> None:
    from sublim.kd.losses.registry import METHODS

    page = ref.methods_page()
    rows = ref.method_rows()
    assert set(rows) == set(METHODS)
    for method, params in rows.items():
        assert f"## `{method}`" in page
        for name, accepts, _default, meaning in params:
            assert accepts and meaning.strip(), f"{method}.{name}: no meaning (param_help)"
            assert f"`{name}`" in page


def test_field_comments_reads_inline_and_preceding_comments() -> None:
    from sublim.config import ExperimentConfig

    comments = ref.field_comments(ExperimentConfig)
    assert "sweep" in comments["condition"]
    assert "curves" in comments["diagnostics"]  # from the line above the field
