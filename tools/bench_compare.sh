#!/usr/bin/env bash
# Training throughput, resgrad vs PyTorch, same models, batch and threads.
#   tools/bench_compare.sh                 # ResNet-20/56/110 x original/full_preact
#   DEPTHS="20" UNITS="original" STEPS=5 tools/bench_compare.sh
# Env: THREADS (2), BATCH (128), STEPS (10), PYTHON (/work/torchenv/bin/python),
#      RESGRAD (the release binary; built if unset), RESGRAD_REFERENCE_DIR.
# Each model runs resgrad then PyTorch back to back (separate processes, so
# each peak RSS is its own); check `uptime` first: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
BATCH=${BATCH:-128}
STEPS=${STEPS:-10}
DEPTHS=${DEPTHS:-"20 56 110"}
UNITS=${UNITS:-"original full_preact"}
PYTHON=${PYTHON:-/work/torchenv/bin/python}
PEAK=461
if [ -z "${RESGRAD:-}" ]; then
  cargo build --release --quiet
  RESGRAD="${CARGO_TARGET_DIR:-target}/release/resgrad"
fi
echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/'), threads $THREADS, batch $BATCH, $STEPS timed steps"
printf '| %-26s | %9s | %9s | %6s | %8s | %8s | %14s |\n' model "resgrad img/s" "torch img/s" ratio "resgrad MiB" "torch MiB" "resgrad GFLOP/s"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' ---------------------------- ----------- ----------- -------- ---------- ---------- ----------------
for d in $DEPTHS; do
  for u in $UNITS; do
    r=$("$RESGRAD" bench --depth "$d" --unit "$u" --batch "$BATCH" --steps "$STEPS" --threads "$THREADS" --json)
    t=$("$PYTHON" tools/bench_torch.py --depth "$d" --unit "$u" --batch "$BATCH" --steps "$STEPS" --threads "$THREADS" --json)
    "$PYTHON" - "$r" "$t" "$PEAK" <<'PY'
import json, sys
r, t, peak = json.loads(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3])
print("| %-26s | %9.1f | %9.1f | %5.2fx | %8.0f | %8.0f | %6.1f (%2.0f%%) |" % (
    r["model"], r["images_per_s"], t["images_per_s"], r["images_per_s"] / t["images_per_s"],
    r["peak_rss_mib"], t["peak_rss_mib"], r["gflops"], 100 * r["gflops"] / peak))
PY
  done
done
