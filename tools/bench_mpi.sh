#!/usr/bin/env bash
# Data-parallel throughput (BENCHMARKS.md, "Data-parallel training over MPI"):
# ResNet-20 and ResNet-56 on CIFAR-10, 1 process x 2 threads against
# 2 ranks x 1 thread (mpirun -np 2), ROUNDS interleaved rounds; images/s of
# steps 11-20 (metrics.csv's second row) and the allreduce line a multi-rank
# run prints at its end.
# Usage: tools/bench_mpi.sh CIFAR10_DIR [ROUNDS]   (build: cargo build --release --features mpi)
set -euo pipefail
data=${1:?CIFAR-10 directory (cifar-10-batches-bin)}
rounds=${2:-3}
bin=$(cd "$(dirname "$0")/.." && pwd)/target/release/resgrad
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for round in $(seq "$rounds"); do
  for depth in 20 56; do
    args=(--data "cifar10:$data" --depth "$depth" --batch 128 --iters 20 --eval-every 10 --flow-every 0 --val 256 --no-augment)
    "$bin" --threads 2 train "${args[@]}" --out "$work/p" >"$work/p.log" 2>&1
    mpirun -np 2 "$bin" --threads 1 train "${args[@]}" --out "$work/r" >"$work/r.log" 2>&1
    p=$(sed -n 3p "$work/p/metrics.csv" | cut -d, -f8)
    r=$(sed -n 3p "$work/r/metrics.csv" | cut -d, -f8)
    echo "round $round ResNet-$depth: 1x2 $p img/s, 2x1 $r img/s; $(grep -o 'gradient allreduce.*' "$work/r.log"); load $(cut -d' ' -f1 /proc/loadavg)"
    rm -rf "$work/p" "$work/r"
  done
done
