#!/usr/bin/env bash
# Training throughput, resgrad against PyTorch's four CPU modes, same models,
# batch and threads: one markdown table for BENCHMARKS.md.
#   tools/bench_compare.sh                   # ResNet-20/56/110 x original/full_preact, 5 rounds
#   DEPTHS=20 UNITS=original ROUNDS=1 STEPS=3 tools/bench_compare.sh   # a quick check
#   tools/bench_compare.sh --e2e             # end to end: tools/e2e_compare.sh (EPOCHS=2)
# Env: DEPTHS ("20 56 110"), UNITS ("original full_preact"), ROUNDS (5),
#      WARMUP (2), STEPS (5) timed steps per cell, THREADS (2), BATCH (128),
#      MODES ("f32 f32-cl bf16 bf16-cl": PyTorch's), PYTHON
#      (/work/venv-torch/bin/python), RESGRAD (the release binary; built if
#      unset), RESGRAD_REFERENCE_DIR (where torch_resnet.py is), PEAK and
#      PEAK_BF16 (GFLOP/s: instead of `resgrad peak`'s).
# PyTorch's modes (tools/bench_torch.py): f32 NCHW, f32 channels-last, bf16
# autocast NCHW, bf16 autocast channels-last. resgrad runs in f32 and, when
# its `bench` takes `--precision`, in bf16 too. Every round runs each model in
# every mode, resgrad first in odd rounds and last (the order reversed) in
# even ones; a cell is the median images/s over the rounds. Each ratio is
# resgrad's against the fastest PyTorch mode of the same precision (the one
# with the best median; named in brackets), the median of the rounds' ratios.
# The share of peak: the median GFLOP/s of `resgrad bench` over `resgrad
# peak`'s (f32 FMA; bf16 dot products where `peak --json` reports them).
# About 12 minutes for the full table on a quiet machine; check `uptime` first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--e2e" ]; then
  shift
  exec tools/e2e_compare.sh "$@"
fi
if [ $# -gt 0 ]; then
  echo "bench_compare.sh: unknown argument $1 (settings are environment variables; see the header)" >&2
  exit 2
fi
THREADS=${THREADS:-2}
BATCH=${BATCH:-128}
WARMUP=${WARMUP:-2}
STEPS=${STEPS:-5}
ROUNDS=${ROUNDS:-5}
DEPTHS=${DEPTHS:-"20 56 110"}
UNITS=${UNITS:-"original full_preact"}
MODES=${MODES:-"f32 f32-cl bf16 bf16-cl"}
PYTHON=${PYTHON:-/work/venv-torch/bin/python}
if [ -z "${RESGRAD:-}" ]; then
  cargo build --release --quiet
  RESGRAD="${CARGO_TARGET_DIR:-target}/release/resgrad"
fi
PRECISIONS="f32"
if "$RESGRAD" bench --help | grep -q -- '--precision'; then
  PRECISIONS="f32 bf16"
fi
T0=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# the measured peaks on the same threads (best of 20 short rounds: the first
# few of a process run slow on this VM)
"$RESGRAD" --threads "$THREADS" peak --rounds 20 --json >"$WORK/peak.json"
"$PYTHON" - "$WORK/peak.json" "${PEAK:-}" "${PEAK_BF16:-}" <<'PY'
import json, sys
path, f32, bf16 = sys.argv[1:]
peak = json.load(open(path))
if f32:
    peak["gflops"] = float(f32)
if bf16:
    peak = {k: v for k, v in peak.items() if "bf16" not in k}
    peak["bf16_gflops"] = float(bf16)
json.dump(peak, open(path, "w"))
PY
CPU=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //')
TORCH=$("$PYTHON" -c 'import torch; print(torch.__version__)')
echo "# $(date -u +%FT%TZ) ${CPU:-unknown CPU}, $(uptime | sed 's/.*load/load/'), threads $THREADS, batch $BATCH, $WARMUP warm-up + $STEPS timed steps per cell, medians of $ROUNDS rounds, PyTorch $TORCH"
"$PYTHON" - "$WORK/peak.json" "$PRECISIONS" "$MODES" <<'PY'
import json, sys
peak = json.load(open(sys.argv[1]))
precs, modes = sys.argv[2].split(), sys.argv[3].split()
groups = [p for p in ("f32", "bf16") if p in precs or any(m.split("-")[0] == p for m in modes)]
cols = ["model"]
for p in groups:
    cols += ["resgrad " + p] + ["torch " + m for m in modes if m.split("-")[0] == p]
    cols += [p + " ratio (vs fastest torch " + p + ")"]
cols += ["resgrad %s GFLOP/s (share of peak)" % p for p in precs]
print("| " + " | ".join(cols) + " |")
print("|" + "|".join("---" for _ in cols) + "|")
PY
for d in $DEPTHS; do
  for u in $UNITS; do
    out="$WORK/d$d-$u.txt"
    : >"$out"
    for r in $(seq "$ROUNDS"); do
      run_resgrad() {
        for p in $PRECISIONS; do
          local flag=()
          [ "$p" = f32 ] || flag=(--precision "$p")
          printf 'resgrad-%s %s\n' "$p" "$("$RESGRAD" bench --depth "$d" --unit "$u" --batch "$BATCH" \
            --warmup "$WARMUP" --steps "$STEPS" --threads "$THREADS" "${flag[@]}" --json)" >>"$out"
        done
      }
      run_torch() {
        "$PYTHON" tools/bench_torch.py --depth "$d" --unit "$u" --batch "$BATCH" --warmup "$WARMUP" \
          --steps "$STEPS" --threads "$THREADS" --modes "$1" --json | sed 's/^/torch /' >>"$out"
      }
      if [ $((r % 2)) -eq 1 ]; then
        run_resgrad
        run_torch "$(echo $MODES | tr ' ' ',')"
      else
        run_torch "$(echo $MODES | tr ' ' '\n' | tac | paste -sd,)"
        run_resgrad
      fi
    done
    "$PYTHON" - "$WORK/peak.json" "$PRECISIONS" "$MODES" "$out" <<'PY'
import json, statistics, sys
peak = json.load(open(sys.argv[1]))
precs, modes = sys.argv[2].split(), sys.argv[3].split()
runs = {}  # key -> [result per round]
for line in open(sys.argv[4]):
    tag, js = line.split(" ", 1)
    r = json.loads(js)
    key = tag if tag != "torch" else "torch-" + r["mode"]
    runs.setdefault(key, []).append(r)
med = statistics.median
ips = lambda k: med(x["images_per_s"] for x in runs[k])
def peak_of(p):
    # f32: "gflops"; bf16: a "bf16..." number, at the top level or nested
    if p == "f32":
        return peak.get("gflops")
    for k, v in peak.items():
        if "bf16" in k and isinstance(v, (int, float)):
            return v
        if "bf16" in k and isinstance(v, dict) and isinstance(v.get("gflops"), (int, float)):
            return v["gflops"]
    return None
cells, shares = [], []
model = next(iter(runs.values()))[0]["model"]
groups = [p for p in ("f32", "bf16") if p in precs or any(m.split("-")[0] == p for m in modes)]
for p in groups:
    rk = "resgrad-" + p
    tks = ["torch-" + m for m in modes if m.split("-")[0] == p]
    cells.append("%.0f" % ips(rk) if rk in runs else "-")
    cells += ["%.0f" % ips(k) for k in tks]
    if tks and rk in runs:
        best = max(tks, key=ips)
        ratio = med(a["images_per_s"] / b["images_per_s"] for a, b in zip(runs[rk], runs[best]))
        cells.append("%.2fx (%s)" % (ratio, best[len("torch-"):]))
    else:
        cells.append("-")
for p in precs:
    rk = "resgrad-" + p
    gf = med(x["gflops"] for x in runs[rk])
    pk = peak_of(p)
    shares.append("%.1f (%s)" % (gf, "%.0f%%" % (100 * gf / pk) if pk else "no peak"))
print("| " + " | ".join([model] + cells + shares) + " |")
PY
  done
done
"$PYTHON" - "$WORK/peak.json" "$(($(date +%s) - T0))" <<'PY'
import json, sys
peak = json.load(open(sys.argv[1]))
nums = {k: v for k, v in peak.items() if "gflops" in k and isinstance(v, (int, float))}
print("\n(resgrad peak on %s threads, GFLOP/s: %s; %s s in all)" % (
    peak.get("threads"), ", ".join("%s %.0f" % kv for kv in nums.items()), sys.argv[2]))
PY
