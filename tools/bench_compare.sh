#!/usr/bin/env bash
# Training throughput, resgrad vs PyTorch, same models, batch and threads.
#   tools/bench_compare.sh                 # ResNet-20/56/110 x original/full_preact
#   DEPTHS="20" UNITS="original" STEPS=5 tools/bench_compare.sh
#   ROUNDS=3 tools/bench_compare.sh        # 3 interleaved pairs per model, medians
# Env: THREADS (2), BATCH (128), STEPS (10), ROUNDS (1), PEAK (GFLOP/s;
#      measured by `resgrad peak` if unset), PYTHON
#      (/work/torchenv/bin/python), RESGRAD (the release binary; built if
#      unset), RESGRAD_REFERENCE_DIR.
# Each model runs resgrad then PyTorch back to back (separate processes, so
# each peak RSS is its own), ROUNDS times, and reports each framework's
# median images/s over the rounds, the median ratio of the pairs, and the
# ratio of the two fastest steps seen (the least disturbed): on a shared
# machine one run can be 20% off. Check `uptime` first.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
BATCH=${BATCH:-128}
STEPS=${STEPS:-10}
ROUNDS=${ROUNDS:-1}
DEPTHS=${DEPTHS:-"20 56 110"}
UNITS=${UNITS:-"original full_preact"}
PYTHON=${PYTHON:-/work/torchenv/bin/python}
if [ -z "${RESGRAD:-}" ]; then
  cargo build --release --quiet
  RESGRAD="${CARGO_TARGET_DIR:-target}/release/resgrad"
fi
# the measured f32 FMA peak on the same threads (best of 20 short rounds:
# the first few of a process run slow on this VM)
PEAK=${PEAK:-$("$RESGRAD" --threads "$THREADS" peak --rounds 20 --json | "$PYTHON" -c 'import json,sys; print(round(json.load(sys.stdin)["gflops"]))')}
CPU=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //')
echo "# $(date -u +%FT%TZ) ${CPU:-unknown CPU}, $(uptime | sed 's/.*load/load/'), threads $THREADS, batch $BATCH, $STEPS timed steps, measured peak $PEAK GFLOP/s"
printf '| %-26s | %9s | %9s | %6s | %6s | %8s | %8s | %14s |\n' model "resgrad img/s" "torch img/s" ratio "ratio (fastest steps)" "resgrad MiB" "torch MiB" "resgrad GFLOP/s (share of peak)"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' ---------------------------- ----------- ----------- -------- -------- ---------- ---------- ----------------
for d in $DEPTHS; do
  for u in $UNITS; do
    rs=(); ts=()
    for _ in $(seq "$ROUNDS"); do
      rs+=("$("$RESGRAD" bench --depth "$d" --unit "$u" --batch "$BATCH" --steps "$STEPS" --threads "$THREADS" --json)")
      ts+=("$("$PYTHON" tools/bench_torch.py --depth "$d" --unit "$u" --batch "$BATCH" --steps "$STEPS" --threads "$THREADS" --json)")
    done
    "$PYTHON" - "$PEAK" "${rs[@]}" "${ts[@]}" <<'PY'
import json, statistics, sys
peak = float(sys.argv[1])
runs = [json.loads(a) for a in sys.argv[2:]]
k = len(runs) // 2
r, t = runs[:k], runs[k:]
med = lambda xs: statistics.median(xs)
ri, ti = med([x["images_per_s"] for x in r]), med([x["images_per_s"] for x in t])
ratio = med([a["images_per_s"] / b["images_per_s"] for a, b in zip(r, t)])
gf = med([x["gflops"] for x in r])
# the fastest step of each framework over all rounds: the least disturbed
# by other tenants of a shared machine
best = min(x["step_ms_min"] for x in t) / min(x["step_ms_min"] for x in r)
print("| %-26s | %9.1f | %9.1f | %5.2fx | %5.2fx | %8.0f | %8.0f | %6.1f (%2.0f%%) |" % (
    r[0]["model"], ri, ti, ratio, best, max(x["peak_rss_mib"] for x in r),
    max(x["peak_rss_mib"] for x in t), gf, 100 * gf / peak))
PY
  done
done
