#!/usr/bin/env bash
# End to end: the same short CIFAR-10 recipe in `resgrad train` and in a plain
# PyTorch loop (tools/e2e_torch.py) in its fastest CPU mode of the same
# precision, wall time and final test accuracy side by side (a markdown
# table for BENCHMARKS.md). Also `tools/bench_compare.sh --e2e`.
#   tools/e2e_compare.sh                     # 2 epochs, f32 (and bf16 where resgrad has it)
#   EPOCHS=10 tools/e2e_compare.sh
#   ITERS=20 PRECISIONS=f32 tools/e2e_compare.sh   # a quick check (a fraction of an epoch)
# Recipe: pre-activation ResNet-20 (identity shortcuts, B projections), batch
# 128, SGD momentum 0.9, weight decay 1e-4, cosine learning rate from 0.1 to
# 0 over the run, pad-4 crop + flip, an evaluation of the test set after
# every epoch (and at the end), seed 0. resgrad keeps its defaults around
# the step (the probe every 100 iterations, steps.csv, checkpoints).
# Env: EPOCHS (2), ITERS (steps instead of epochs), THREADS (2), BATCH (128),
#      DATA (/work/shared/data/cifar-10-batches-bin), PRECISIONS ("f32 bf16";
#      bf16 only where `resgrad train` takes --precision), TORCH_F32 (f32-cl),
#      TORCH_BF16 (bf16-cl): PyTorch's mode per precision (the fastest in
#      bench_compare.sh's table), PYTHON (/work/venv-torch/bin/python),
#      RESGRAD (the release binary; built if unset).
# Wall: the whole process (start-up, data loading and normalisation
# included) and the loop alone (resgrad: metrics.csv's wall_s; PyTorch: the
# training loop with its evaluations). Steps' img/s: the training steps
# alone (forward, backward, update; resgrad's with its divergence check and
# probe, from timings.json), no batch assembly, logging or evaluation. The runs alternate: resgrad first
# for f32, PyTorch first for bf16.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
  echo "e2e_compare.sh: unknown argument $1 (settings are environment variables; see the header)" >&2
  exit 2
fi
EPOCHS=${EPOCHS:-2}
ITERS=${ITERS:-}
THREADS=${THREADS:-2}
BATCH=${BATCH:-128}
DATA=${DATA:-/work/shared/data/cifar-10-batches-bin}
TORCH_F32=${TORCH_F32:-f32-cl}
TORCH_BF16=${TORCH_BF16:-bf16-cl}
PYTHON=${PYTHON:-/work/venv-torch/bin/python}
if [ -z "${RESGRAD:-}" ]; then
  cargo build --release --quiet
  RESGRAD="${CARGO_TARGET_DIR:-target}/release/resgrad"
fi
if [ -z "${PRECISIONS:-}" ]; then
  PRECISIONS="f32"
  if "$RESGRAD" train --help | grep -q -- '--precision'; then
    PRECISIONS="f32 bf16"
  fi
fi
if [ ! -f "$DATA/test_batch.bin" ]; then
  echo "e2e_compare.sh: no CIFAR-10 binary batches in $DATA (set DATA)" >&2
  exit 2
fi
if [ -n "$ITERS" ]; then
  LENGTH=(--iters "$ITERS")
  what="$ITERS iterations"
else
  LENGTH=(--epochs "$EPOCHS")
  what="$EPOCHS epochs"
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
now() { date +%s.%N; }
CPU=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //')
echo "# $(date -u +%FT%TZ) ${CPU:-unknown CPU}, $(uptime | sed 's/.*load/load/'), threads $THREADS, batch $BATCH, pre-activation ResNet-20, $what"
echo "| precision | resgrad wall s (loop) | PyTorch wall s (loop) | PyTorch mode | speed-up | resgrad test acc | PyTorch test acc | resgrad img/s (steps) | PyTorch img/s (steps) |"
echo "|---|---|---|---|---|---|---|---|---|"
for p in $PRECISIONS; do
  mode=$TORCH_F32
  flag=()
  if [ "$p" != f32 ]; then
    mode=$TORCH_BF16
    flag=(--precision "$p")
  fi
  run_resgrad() {
    local t0
    t0=$(now)
    "$RESGRAD" --threads "$THREADS" train --data "cifar10:$DATA" --depth 20 --unit full_preact \
      --batch "$BATCH" --lr 0.1 --momentum 0.9 --wd 1e-4 --schedule cosine "${LENGTH[@]}" \
      "${flag[@]}" --out "$WORK/resgrad-$p" --quiet >"$WORK/resgrad-$p.log"
    echo "$t0 $(now)" >"$WORK/resgrad-$p.wall"
  }
  run_torch() {
    local t0
    t0=$(now)
    "$PYTHON" tools/e2e_torch.py --data "$DATA" --depth 20 --unit full_preact --batch "$BATCH" \
      --lr 0.1 --threads "$THREADS" --mode "$mode" "${LENGTH[@]}" >"$WORK/torch-$p.json"
    echo "$t0 $(now)" >"$WORK/torch-$p.wall"
  }
  if [ "$p" = f32 ]; then
    run_resgrad
    run_torch
  else
    run_torch
    run_resgrad
  fi
  "$PYTHON" - "$WORK" "$p" "$mode" <<'PY'
import csv, json, sys
work, p, mode = sys.argv[1:]
wall = lambda f: (lambda a, b: float(b) - float(a))(*open(f).read().split())
rows = list(csv.DictReader(open("%s/resgrad-%s/metrics.csv" % (work, p))))
try:
    tm = json.load(open("%s/resgrad-%s/timings.json" % (work, p)))
    steps = tm["images"] / (tm["passes_s"] + tm["divergence_check_s"] + tm["probe_s"] + tm["update_s"])
except FileNotFoundError:  # a build before timings.json: metrics.csv's last window
    steps = float(rows[-1]["images_per_s"])
t = json.load(open("%s/torch-%s.json" % (work, p)))
rw, tw = wall("%s/resgrad-%s.wall" % (work, p)), wall("%s/torch-%s.wall" % (work, p))
print("| %s | %.1f (%.1f) | %.1f (%.1f) | %s | %.2fx | %.2f%% | %.2f%% | %.0f | %.0f |" % (
    p, rw, float(rows[-1]["wall_s"]), tw, t["loop_s"], mode, tw / rw,
    100 * float(rows[-1]["test_acc"]), 100 * t["test_acc"],
    steps, t["step_images_per_s"]))
PY
done
