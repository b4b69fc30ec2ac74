"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check on the CPU with tiny sizes, so
the script cannot rot where no GPU is (about 35 s of CPU time on the 2-core reference)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # every step of the GPU script (~45 s); make test-slow and CI run it
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run(tmp_path: Path) -> None:
    env = {**os.environ, "SUBLIM_PY": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for figure in ("runs per minute", "images per second", "peak GPU memory", "|delta|"):
        assert figure in out
    assert "figure 2 runs per minute:       " in out and "(12 runs in" in out
    assert "largest |delta| CPU vs cpu:    0 " in out  # the same run twice on the CPU
    assert "epochs [1, 2]" in out and out.rstrip().endswith("gpu_check: ok")
    assert not list(tmp_path.glob("gpu_check.*"))  # the work directory is removed
