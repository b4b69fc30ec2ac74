#!/usr/bin/env bash
# The GPU path, proven in one script (at most ~5 minutes on one GPU):
#   1. the CUDA test subset (tests skipped without CUDA: pytest -k cuda),
#   2. a default `sublim run` on CUDA and the same run on the CPU (largest |delta| of metrics),
#   3. figure 2 on CUDA for two seeds (cross-seed stacks: runs per minute),
#   4. a KD step with --amp --channels-last (images per second),
#   5. kill -9 of a KD experiment after its first epoch, rerun, compare with an uninterrupted run,
# then prints the figures (runs/min, images/s, peak GPU memory, the largest CPU-CUDA |delta|).
#
# Usage: bash benchmarks/gpu_check.sh [--dry-run] [--keep]
#   --dry-run  every step on the CPU with tiny sizes (CI runs it: tests/test_gpu_check.py)
#   --keep     keep the work directory (printed at the end)
# Python: $SUBLIM_PY if set, else .venv/bin/python (created with `make .venv/.installed-dev` when
# missing; on a CUDA machine run `make TORCH_CONSTRAINTS=/dev/null .venv/.installed-dev` first if
# the pinned CPU torch is not wanted).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
KEEP=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg (use --dry-run or --keep)" >&2; exit 2 ;;
    esac
done

if [[ -n "${SUBLIM_PY:-}" ]]; then
    PY="$SUBLIM_PY"
else
    [[ -x .venv/bin/python ]] || make -s .venv/.installed-dev
    PY=.venv/bin/python
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
cleanup() { [[ $KEEP == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT
T0=$SECONDS

if [[ $DRY == 1 ]]; then
    DEV=cpu
    RUN_SIZE=(--classes 0,1 --teacher-epochs 1 --student-epochs 1 --noise-steps 2
        --noise-bsize 100 --eval-noise-batches 1 --eval-noise-bsize 100
        --teacher-hidden-dims 16 --student-hidden-dims 16)
    FIG_SIZE=(--set teacher_epochs=1 --set student_epochs=1 --set noise_steps=2
        --set noise_bsize=100 --set eval_noise_batches=1 --set eval_noise_bsize=100
        --set "teacher_hidden_dims=[16,16]" --set "student_hidden_dims=[16,16]" --set "classes=[0,1]" --set m=3)  # one m: 6 conditions x 2 seeds
    KD_SIZE=(--train-limit 128 --test-limit 64 --batch-size 64)
    KD_EPOCHS=2
else
    DEV=cuda
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
        echo "gpu_check.sh: no CUDA device visible to torch; use --dry-run on a CPU" >&2
        exit 2
    }
    RUN_SIZE=()
    FIG_SIZE=()
    KD_SIZE=(--train-limit 20000 --test-limit 2000 --batch-size 256)
    KD_EPOCHS=4
fi

say() { printf '\n== %s (%ds)\n' "$1" $((SECONDS - T0)); }

# `sublim ARGS` in-process, appending the peak GPU memory it allocated (MiB) to $PEAKS.
sublim_peak() {
    PEAKS="$PEAKS" "$PY" - "$@" <<'PYEOF'
import os, sys
import torch
from sublim.cli import main
rc = main(sys.argv[1:])
if torch.cuda.is_available():
    with open(os.environ["PEAKS"], "a") as f:
        f.write(f"peak_gpu_mib {torch.cuda.max_memory_allocated() / 2**20:.0f}\n")
sys.exit(rc)
PYEOF
}
PEAKS="$WORK/peaks.txt"
touch "$PEAKS"

say "1. CUDA test subset (skipped without CUDA)"
"$PY" -m pytest -q -p no:cacheprovider tests/test_kd_losses.py -k cuda 2>&1 | tail -n 3

say "2. default run on $DEV and on cpu"
sublim_peak run --device "$DEV" --outdir "$WORK/run_dev" --quiet "${RUN_SIZE[@]}"
"$PY" -m sublim run --device cpu --outdir "$WORK/run_cpu" --quiet "${RUN_SIZE[@]}"
DELTA=$("$PY" - "$WORK/run_dev" "$WORK/run_cpu" <<'PYEOF'
import csv, glob, sys
def row(d):
    (path,) = glob.glob(f"{d}/seed_*/runs.csv")
    return next(csv.DictReader(open(path, newline="")))
a, b = row(sys.argv[1]), row(sys.argv[2])
def number(v):
    try:
        return float(v)
    except ValueError:
        return None
keys = [k for k in a if k.startswith(("teacher_final", "student_init", "student_final"))
        and number(a[k]) is not None and number(b[k]) is not None]
worst = max(keys, key=lambda k: abs(float(a[k]) - float(b[k])))
print(f"{abs(float(a[worst]) - float(b[worst])):.3g} ({worst})")
PYEOF
)

say "3. figure 2, two seeds on $DEV (cross-seed stacks)"
start=$SECONDS
sublim_peak sweep figures/fig2_init_conditions.toml --seeds 0..1 --outdir "$WORK/fig2" --quiet \
    --set "device=\"$DEV\"" "${FIG_SIZE[@]}"
FIG_SECONDS=$((SECONDS - start))
FIG_RUNS=$(( $(wc -l < "$WORK/fig2/runs_all_seeds.csv") - 1 ))

KD=(kd train-teacher --dataset mnist --model resnet8 --seed 0 --device "$DEV" --quiet
    "${KD_SIZE[@]}")
say "4. KD step with --amp --channels-last on $DEV"
sublim_peak "${KD[@]}" --epochs 1 --amp --channels-last --outdir "$WORK/kd_amp"
IMAGES_PER_S=$("$PY" - "$WORK/kd_amp" <<'PYEOF'
import json, pathlib, sys
(st,) = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).rglob("status.json")]
cfg = json.loads(next(pathlib.Path(sys.argv[1]).rglob("config.json")).read_text())
n = cfg.get("train_limit") or 60000
print(f"{n * st['epochs'] / st['train_seconds']:.0f}")
PYEOF
)

say "5. kill -9 of a KD experiment after epoch 1, then resume"
"$PY" -m sublim "${KD[@]}" --epochs "$KD_EPOCHS" --outdir "$WORK/kd_ref"
"$PY" -m sublim "${KD[@]}" --epochs "$KD_EPOCHS" --outdir "$WORK/kd_kill" &
PID=$!
while kill -0 "$PID" 2>/dev/null && [[ -z "$(find "$WORK/kd_kill" -name last.pt 2>/dev/null)" ]]; do
    sleep 0.05
done
if kill -9 "$PID" 2>/dev/null; then KILLED=yes; else KILLED="no (it finished first)"; fi
wait "$PID" 2>/dev/null || true
"$PY" -m sublim "${KD[@]}" --epochs "$KD_EPOCHS" --outdir "$WORK/kd_kill"
RESUME=$("$PY" - "$WORK/kd_ref" "$WORK/kd_kill" <<'PYEOF'
import json, pathlib, sys
def hist(d):
    (p,) = pathlib.Path(d).rglob("metrics.json")
    return json.loads(p.read_text())
a, b = hist(sys.argv[1]), hist(sys.argv[2])
assert b["epoch"] == a["epoch"], (a["epoch"], b["epoch"])
d = max(abs(x - y) for k in ("train_loss", "test_loss", "test_acc") for x, y in zip(a[k], b[k]))
print(f"epochs {b['epoch']}, largest |delta| vs uninterrupted {d:.3g}")
PYEOF
)

PEAK=$(awk '/^peak_gpu_mib/ {if ($2 > m) m = $2} END {print (m == "" ? "n/a (no CUDA)" : m " MiB")}' "$PEAKS")
say "figures"
echo "device:                         $DEV$([[ $DRY == 1 ]] && echo ' (dry run: tiny sizes, numbers are not GPU figures)')"
echo "figure 2 runs per minute:       $((FIG_RUNS * 60 / (FIG_SECONDS > 0 ? FIG_SECONDS : 1))) ($FIG_RUNS runs in ${FIG_SECONDS}s)"
echo "KD images per second (AMP, CL): $IMAGES_PER_S"
echo "peak GPU memory:                $PEAK"
echo "largest |delta| CPU vs $DEV:    $DELTA"
echo "KD kill -9 and resume:          killed $KILLED; $RESUME"
echo "total:                          $((SECONDS - T0)) s"
[[ $KEEP == 1 ]] && echo "work directory: $WORK"
echo "gpu_check: ok"
