#!/usr/bin/env python3
"""A plain PyTorch CIFAR-10 training loop, the counterpart of `resgrad train`
for tools/e2e_compare.sh: the same recipe and the same data handling.

  - data: the CIFAR-10 binary batches (data_batch_1..5.bin, test_batch.bin),
    normalised per channel with the training set's mean and population
    standard deviation over 0..255 pixels (as resgrad's data::Norm);
  - each epoch a fresh seeded permutation, the last partial batch dropped;
  - augmentation in numpy after normalisation: pad 4 zeros on each side, a
    random 32x32 crop, a horizontal flip with probability 1/2;
  - the reference net (torch_resnet.py, same spec), SGD momentum 0.9, weight
    decay 1e-4, cosine learning rate per iteration from --lr to 0 over the
    run (resgrad's `--schedule cosine`), cross-entropy;
  - an evaluation of the test set (eval mode) after every epoch and at the
    end;
  - a mode: f32 or bf16 autocast (forward and loss), NCHW or channels-last
    (f32, f32-cl, bf16, bf16-cl: tools/torch_modes.py, shared with
    bench_torch.py).

Prints one JSON object: wall time of the loop (evaluations included), of
the whole process so far, images/s of the training steps, final test
accuracy and loss.

    python tools/e2e_torch.py --data DIR --epochs 2 --mode f32-cl --threads 2
    python tools/e2e_torch.py --data DIR --iters 20 --mode bf16-cl   # a quick check
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch_modes

T_START = time.perf_counter()


def read_cifar(np, files):
    raw = b"".join(Path(f).read_bytes() for f in files)
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 1 + 3 * 32 * 32)
    return rec[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32), rec[:, 0].astype(np.int64)


def augment(np, rng, x, pad):
    """pad-`pad` zero padding, a random crop back to HxW, a flip with p 1/2"""
    n, c, h, w = x.shape
    padded = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    out = np.empty_like(x)
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    flip = rng.integers(0, 2, n).astype(bool)
    for k in range(n):
        crop = padded[k, :, dy[k]:dy[k] + h, dx[k]:dx[k] + w]
        out[k] = crop[:, :, ::-1] if flip[k] else crop
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="cifar-10-batches-bin directory")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--unit", default="full_preact")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--iters", type=int, help="stop after this many steps (instead of --epochs)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", default="f32-cl", choices=torch_modes.MODES)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import numpy as np
    import torch
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    Net = torch_modes.reference_net("e2e_torch")

    d = Path(a.data)
    for f in ["data_batch_%d.bin" % i for i in range(1, 6)] + ["test_batch.bin"]:
        if not (d / f).is_file():
            sys.exit("e2e_torch: %s is missing (the CIFAR-10 binary version)" % (d / f))
    xtr, ytr = read_cifar(np, [d / ("data_batch_%d.bin" % i) for i in range(1, 6)])
    xte, yte = read_cifar(np, [d / "test_batch.bin"])
    mean = xtr.astype(np.float64).mean(axis=(0, 2, 3))
    std = xtr.astype(np.float64).std(axis=(0, 2, 3))
    norm = lambda x: ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
    xtr, xte = norm(xtr), norm(xte)

    spec = torch_modes.cifar_spec(a.depth, a.unit)
    mode = torch_modes.Mode(torch, a.mode)
    tr = torch_modes.Trainer(torch, Net, spec, mode, a.lr)
    net, opt, loss_fn = tr.net, tr.opt, tr.loss_fn
    bpe = len(xtr) // a.batch
    total = a.iters if a.iters else a.epochs * bpe
    rng = np.random.default_rng(a.seed)

    def evaluate():
        net.eval()
        loss, correct = 0.0, 0
        with torch.no_grad(), mode.autocast():
            for i in range(0, len(xte), a.batch):
                x = mode.input(torch.from_numpy(xte[i:i + a.batch]))
                y = torch.from_numpy(yte[i:i + a.batch])
                out = net(x).float()
                loss += loss_fn(out, y).item() * len(y)
                correct += (out.argmax(1) == y).sum().item()
        net.train()
        return loss / len(xte), correct / len(xte)

    t0 = time.perf_counter()
    step_s, it, evals = 0.0, 0, []
    while it < total:
        perm = rng.permutation(len(xtr))
        for b in range(bpe):
            idx = perm[b * a.batch:(b + 1) * a.batch]
            x = mode.input(torch.from_numpy(augment(np, rng, xtr[idx], 4)))
            y = torch.from_numpy(ytr[idx])
            ts = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = 0.5 * a.lr * (1.0 + math.cos(math.pi * it / total))
            tr.step(x, y)
            step_s += time.perf_counter() - ts
            it += 1
            if it % bpe == 0 or it == total:
                evals.append((it,) + evaluate())
            if it >= total:
                break
    wall = time.perf_counter() - t0
    print(json.dumps({
        "framework": "pytorch " + torch.__version__,
        "mode": a.mode,
        "model": torch_modes.model_name(spec),
        "threads": torch.get_num_threads(),
        "iters": it,
        "epochs": it / bpe,
        "loop_s": wall,
        "process_s": time.perf_counter() - T_START,
        "step_images_per_s": it * a.batch / step_s,
        "test_loss": evals[-1][1],
        "test_acc": evals[-1][2],
        "evaluations": [{"iter": e[0], "test_loss": e[1], "test_acc": e[2]} for e in evals],
    }))


if __name__ == "__main__":
    main()
