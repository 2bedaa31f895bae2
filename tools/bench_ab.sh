#!/usr/bin/env bash
# A/B training throughput of two resgrad binaries (before / after a change),
# interleaved so that a noisy neighbour hits both alike.
#   tools/bench_ab.sh A_BINARY B_BINARY
#   ROUNDS=5 DEPTHS="20 110" UNITS="original full_preact" tools/bench_ab.sh base new
#   PRECISIONS="f32 bf16" tools/bench_ab.sh base new   # both binaries take --precision
# Env: ROUNDS (5), DEPTHS ("20 110"), UNITS ("original full_preact"),
#      PRECISIONS ("f32"), THREADS (2), BATCH (128), STEPS (10), WARMUP (2).
# Each round runs `resgrad bench` once with A, then once with B (the order
# alternates every round), separate processes. Reports per model the median
# images/s of each over the rounds, the median of the per-round ratios B/A,
# and the ratio of the fastest steps seen (the least disturbed). The issue's
# bar: every median within 3%. Check `uptime` first: numbers from a busy
# machine are noise.
set -euo pipefail
A=${1:?usage: bench_ab.sh A_BINARY B_BINARY}
B=${2:?usage: bench_ab.sh A_BINARY B_BINARY}
ROUNDS=${ROUNDS:-5}
DEPTHS=${DEPTHS:-"20 110"}
UNITS=${UNITS:-"original full_preact"}
PRECISIONS=${PRECISIONS:-f32}
THREADS=${THREADS:-2}
BATCH=${BATCH:-128}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-2}
CPU=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //')
echo "# $(date -u +%FT%TZ) ${CPU:-unknown CPU}, $(uptime | sed 's/.*load/load/'), threads $THREADS, batch $BATCH, $STEPS timed steps, $ROUNDS rounds"
echo "# A = $A"
echo "# B = $B"
printf '| %-26s | %9s | %9s | %8s | %10s |\n' model "A img/s" "B img/s" "B/A" "B/A (fastest steps)"
printf '|%s|%s|%s|%s|%s|\n' ---------------------------- ----------- ----------- ---------- ------------
bench() {
  local prec=()
  # f32 is every binary's default: name it only for the others
  [ "$4" = f32 ] || prec=(--precision "$4")
  "$1" bench --depth "$2" --unit "$3" --batch "$BATCH" --steps "$STEPS" \
    --warmup "$WARMUP" --threads "$THREADS" "${prec[@]}" --json
}
for d in $DEPTHS; do
  for u in $UNITS; do
   for P in $PRECISIONS; do
    as=(); bs=()
    for r in $(seq "$ROUNDS"); do
      if [ $((r % 2)) -eq 1 ]; then
        as+=("$(bench "$A" "$d" "$u" "$P")"); bs+=("$(bench "$B" "$d" "$u" "$P")")
      else
        bs+=("$(bench "$B" "$d" "$u" "$P")"); as+=("$(bench "$A" "$d" "$u" "$P")")
      fi
    done
    python3 - "$P" "${as[@]}" "${bs[@]}" <<'PY'
import json, statistics, sys
prec = sys.argv[1]
runs = [json.loads(a) for a in sys.argv[2:]]
k = len(runs) // 2
a, b = runs[:k], runs[k:]
med = statistics.median
ai, bi = med([x["images_per_s"] for x in a]), med([x["images_per_s"] for x in b])
ratio = med([y["images_per_s"] / x["images_per_s"] for x, y in zip(a, b)])
best = min(x["step_ms_min"] for x in a) / min(x["step_ms_min"] for x in b)
print("| %-26s | %9.1f | %9.1f | %7.3fx | %9.3fx |" % (a[0]["model"] + " " + prec, ai, bi, ratio, best))
PY
   done
  done
done
