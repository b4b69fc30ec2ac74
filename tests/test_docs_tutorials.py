"""The tutorials' commands and the quick-start notebook, executed at small scale (`make test-docs`).

Each page runs in a fresh directory, its blocks in order, as a reader would type them (see
tests/docs_snippets.py for the marks that skip a block or shrink it). The notebook runs with
nbclient in a fresh directory too, and must finish without an error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docs_snippets import ROOT, snippets, tutorial_pages

pytestmark = pytest.mark.docs

BLOCK_TIMEOUT = 900


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    env["PYTHONUNBUFFERED"] = "1"
    env["SUBLIM_DOCS_TEST"] = "1"  # for readers of a failing log only; sublim ignores it
    env["HOME"] = str(tmp / "home")
    (tmp / "home").mkdir(exist_ok=True)
    return env


def _workdir(tmp: Path) -> Path:
    work = tmp / "work"
    work.mkdir()
    for name in ("figures", "notebooks"):
        (work / name).symlink_to(ROOT / name)
    return work


@pytest.mark.parametrize("page", tutorial_pages(), ids=lambda p: p.stem)
def test_tutorial_commands_run(page: Path, tmp_path: Path) -> None:
    blocks = snippets(page)
    runnable = [b for b in blocks if not b.skip]
    assert runnable or not blocks, f"{page.name}: every block is skipped"
    work, env = _workdir(tmp_path), _env(tmp_path)
    for block in runnable:
        code = block.scaled()
        if block.lang == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", code]
        else:
            cmd = [sys.executable, "-c", code]
        proc = subprocess.run(
            cmd, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT
        )
        assert proc.returncode == 0, (
            f"{block.page}:{block.line} exited {proc.returncode}\n--- block\n{code}\n"
            f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
        )


def test_notebook_executes(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    source = ROOT / "notebooks" / "quickstart.ipynb"
    raw = json.loads(source.read_text())
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, (
                "the notebook is stored without outputs (clear them before committing)"
            )
    work = _workdir(tmp_path)
    shutil.copy(source, work / source.name)
    nb = nbformat.read(work / source.name, as_version=4)
    env = _env(tmp_path)
    old = dict(os.environ)
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(
            nb, timeout=BLOCK_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": work}}
        )
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
