#!/usr/bin/env bash
# Build sublim's wheel and sdist, check that both carry the bundled MNIST, install the wheel
# into a clean virtual environment (no editable install, no source tree on the path) and run
# `sublim run` and `sublim kd layers resnet20` from it. Usage: wheel_check.sh [BUILD_PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build_py=${1:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)

"$build_py" -m build --no-isolation --outdir "$tmp/dist" . >"$tmp/build.log" 2>&1 ||
    { cat "$tmp/build.log"; exit 1; }
wheel=$(ls "$tmp"/dist/sublim-*.whl)
sdist=$(ls "$tmp"/dist/sublim-*.tar.gz)
echo "built $(basename "$wheel") and $(basename "$sdist")"

"$build_py" - "$wheel" "$sdist" <<'PY'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1:]
need = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}
in_wheel = {n.rsplit("/", 1)[-1] for n in zipfile.ZipFile(wheel).namelist()
            if "sublim/data/bundled/mnist/" in n}
in_sdist = {n.rsplit("/", 1)[-1] for n in tarfile.open(sdist).getnames()
            if "sublim/data/bundled/mnist/" in n}
for name, found in (("wheel", in_wheel), ("sdist", in_sdist)):
    missing = need - found
    assert not missing, f"{name} lacks the bundled MNIST files {sorted(missing)}"
assert any(n.endswith("LICENSE") for n in zipfile.ZipFile(wheel).namelist()), "no licence"
print("bundled MNIST in the wheel and the sdist:", ", ".join(sorted(need)))
PY

python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q -c "$root/constraints.txt" "$wheel"
mkdir "$tmp/work"
cd "$tmp/work"
env -u PYTHONPATH "$tmp/venv/bin/python" - <<'PY'
import pathlib, sublim
where = pathlib.Path(sublim.__file__).resolve()
assert "site-packages" in where.parts, f"sublim imported from {where}, not the installed wheel"
print("sublim", sublim.__version__, "from", where.parent)
from sublim.analysis.published import published
n = len(published())
assert n > 250, f"the installed wheel's published KD numbers: {n} rows"
print("published KD numbers in the wheel:", n, "reference cells")
PY
env -u PYTHONPATH "$tmp/venv/bin/sublim" --version
env -u PYTHONPATH "$tmp/venv/bin/sublim" run --device cpu --outdir out
test -s out/seed_000042/runs.csv
env -u PYTHONPATH "$tmp/venv/bin/sublim" kd layers resnet20 | head -5
echo "wheel check passed in $(($(date +%s) - start)) s"
