#!/usr/bin/env bash
# The training loop against the step alone: `resgrad train` on CIFAR-10 and
# `resgrad bench` for the same model, batch and threads, interleaved rounds
# (issue 19: train's images/s within 5% of bench's).
#   tools/loop_vs_bench.sh                       # ResNet-20 pre-activation, 3 rounds
#   DEPTH=56 UNIT=original ROUNDS=5 tools/loop_vs_bench.sh
# Env: DEPTH (20), UNIT (full_preact), ITERS (200 training steps per round),
#      STEPS (50 bench steps), ROUNDS (3), THREADS (2), BATCH (128), DATA
#      (/work/shared/data/cifar-10-batches-bin), RESGRAD (built if unset),
#      PYTHON (python3), EXTRA (more `resgrad train` flags, e.g. "--flow-every 0").
# train holds out 500 training images as its evaluation set (--val 500), so
# the one evaluation at the end stays short. Per round: bench's images/s
# (median step), train's images/s of its steps (metrics.csv: forward,
# backward, divergence check, probe, update) and end to end (timings.json:
# the loop's wall time, batch waits, logs and the evaluation included), and
# timings.json's split of the loop.
set -euo pipefail
cd "$(dirname "$0")/.."
DEPTH=${DEPTH:-20}
UNIT=${UNIT:-full_preact}
ITERS=${ITERS:-200}
STEPS=${STEPS:-50}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
BATCH=${BATCH:-128}
DATA=${DATA:-/work/shared/data/cifar-10-batches-bin}
PYTHON=${PYTHON:-python3}
EXTRA=${EXTRA:-}
if [ -z "${RESGRAD:-}" ]; then
  cargo build --release --quiet
  RESGRAD="${CARGO_TARGET_DIR:-target}/release/resgrad"
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/'), resnet-$DEPTH $UNIT, threads $THREADS, batch $BATCH, train $ITERS steps, bench $STEPS steps"
echo "| round | bench img/s | train img/s (steps) | ratio | train img/s (end to end) | ratio | loop split (timings.json) |"
echo "|---|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  bench() {
    "$RESGRAD" --threads "$THREADS" bench --depth "$DEPTH" --unit "$UNIT" --batch "$BATCH" \
      --warmup 3 --steps "$STEPS" --json >"$WORK/bench.json"
  }
  train() {
    # shellcheck disable=SC2086
    "$RESGRAD" --threads "$THREADS" train --data "cifar10:$DATA" --depth "$DEPTH" --unit "$UNIT" \
      --batch "$BATCH" --iters "$ITERS" --val 500 --schedule cosine --out "$WORK/run" --overwrite \
      --quiet $EXTRA >/dev/null
  }
  if [ $((r % 2)) -eq 1 ]; then bench; train; else train; bench; fi
  "$PYTHON" - "$r" "$WORK" <<'PY'
import csv, json, sys
r, work = sys.argv[1:]
b = json.load(open(work + "/bench.json"))["images_per_s"]
row = list(csv.DictReader(open(work + "/run/metrics.csv")))[-1]
tm = json.load(open(work + "/run/timings.json"))
steps = float(row["images_per_s"])
e2e = tm["images"] / tm["wall_s"]
parts = ["passes", "divergence_check", "probe", "update", "batch_wait", "logging",
         "evaluation", "checkpoint"]
split = ", ".join("%s %.1f%%" % (p.replace("_", " "), 100 * tm[p + "_s"] / tm["wall_s"])
                  for p in parts)
print("| %s | %.0f | %.0f | %.3f | %.0f | %.3f | %s |" % (r, b, steps, steps / b, e2e, e2e / b, split))
PY
done
