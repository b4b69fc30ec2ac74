"""benchmarks/kd_methods.py --quick on a few methods, so the script cannot rot: it times sublim's
own training step (kd.train._epoch) for KD, CE alone, CRD (full-size memory bank) and AB (two
stages) and prints one row each with its ratios to KD and a verdict."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kd_methods.py"


def _script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The script as a module (registered while the test runs: its dataclass looks itself up)."""
    spec = importlib.util.spec_from_file_location("kd_methods_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 15-25 s on the 2-core reference CPU: six small trainings with resnet32x4
def test_quick_run_prints_a_row_per_method_and_stage(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = torch.get_num_threads()
    try:  # one thread: steady on a shared CPU
        _script(monkeypatch).main(
            ["--quick", "--threads", "1", "--pairs", "resnet8x4", "--methods", "none,kd,crd,ab"]
        )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "threads" in out and "batch 8, 2 timed steps after 1 warm-up" in out
    # method, pair (3 words), stage, img/s, step ms, cpu ms, x KD, cpu x KD, GFLOP, FLOP x KD,
    # distiller GFLOP, verdict
    rows = [
        ln.split()
        for ln in out.splitlines()
        if ln.split()[:1] in (["kd"], ["none"], ["crd"], ["ab"])
    ]
    assert [(r[0], r[4]) for r in rows] == [
        ("kd", "main"),
        ("none", "main"),
        ("crd", "main"),
        ("ab", "init"),
        ("ab", "main"),
        ("kd", "again"),
    ]
    ratio = {(r[0], r[4]): (float(r[9]), float(r[11])) for r in rows}  # (cpu x KD, FLOP x KD)
    assert ratio["kd", "main"] == (1.0, 1.0)
    assert ratio["none", "main"][1] < 1 and ratio["ab", "main"][1] < 1  # no teacher forward
    assert float(rows[-1][11]) == 1.0  # KD measured again at the end: the same FLOPs
    assert float(rows[2][12]) > 0  # CRD's embeddings and its scoring against the bank
    assert all(float(r[5]) > 0 and r[13] in ("ok", "over:") for r in rows)
