#!/usr/bin/env python3
"""Training throughput of the PyTorch reference models, the counterpart of
`resgrad bench`: full training steps (zero grads, forward, cross-entropy,
backward, SGD momentum 0.9 / weight decay 1e-4) on random CIFAR-shaped
batches on the CPU, a fixed thread count; warm-up steps, then every step
timed on its own and the median reported; peak RSS of the process so far
(resource.getrusage ru_maxrss).

Modes (--modes, comma separated, run one after another in this process,
each on a fresh net; one JSON line each with --json): f32, f32-cl, bf16,
bf16-cl, as tools/torch_modes.py (shared with e2e_torch.py) defines them.

The model comes from the reference `torch_resnet.py`, looked up in
$RESGRAD_REFERENCE_DIR, then <repo>/../shared/reference, then
/work/shared/reference (never copied into the repository).

    python tools/bench_torch.py --depth 20 --unit original --threads 2 --json
    python tools/bench_torch.py --spec SPEC.json --batch 128 --steps 10
    python tools/bench_torch.py --depth 20 --modes f32,f32-cl,bf16,bf16-cl --json
"""
import argparse
import json
import resource
import statistics
import sys
import time

import torch_modes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", help="model spec (JSON file)")
    ap.add_argument("--depth", type=int)
    ap.add_argument("--unit", default="original")
    ap.add_argument("--block", default="basic")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--modes", default="f32",
                    help="comma separated: f32, f32-cl, bf16, bf16-cl (default f32)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    modes = a.modes.split(",")
    for m in modes:
        if m not in torch_modes.MODES:
            sys.exit("bench_torch: unknown mode %r (one of %s)" % (m, ", ".join(torch_modes.MODES)))
    if a.spec:
        with open(a.spec) as f:
            spec = json.load(f)
    elif a.depth:
        spec = torch_modes.cifar_spec(a.depth, a.unit, a.block)
    else:
        sys.exit("bench_torch: give --spec or --depth")

    import torch
    torch.set_num_threads(a.threads)
    Net = torch_modes.reference_net("bench_torch")

    for mode in modes:
        r = measure(torch, Net, spec, a, mode)
        if a.json:
            print(json.dumps(r), flush=True)
        else:
            print("{model} [{mode}]: batch {batch}, {threads} threads: {images_per_s:.1f} "
                  "images/s (step median {step_ms_median:.1f} ms, min {step_ms_min:.1f} ms), "
                  "peak RSS {peak_rss_mib:.0f} MiB".format(**r), flush=True)


def measure(torch, Net, spec, a, mode):
    torch.manual_seed(0)
    mode = torch_modes.Mode(torch, mode)
    tr = torch_modes.Trainer(torch, Net, spec, mode, 0.01)
    x = torch.randn(a.batch, int(spec.get("in_channels", 3)), a.image, a.image)
    x = mode.input(x)
    y = torch.randint(0, int(spec.get("classes", 10)), (a.batch,))

    def step():
        return tr.step(x, y)

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "model": torch_modes.model_name(spec),
        "framework": "pytorch " + torch.__version__,
        "mode": mode.name,
        "threads": torch.get_num_threads(),
        "batch": a.batch,
        "steps": a.steps,
        "warmup": a.warmup,
        "images_per_s": a.batch / med,
        "step_ms_median": 1e3 * med,
        "step_ms_min": 1e3 * min(times),
        "step_ms_max": 1e3 * max(times),
        "peak_rss_mib": rss_kib / 1024.0,
    }


if __name__ == "__main__":
    main()
