#!/usr/bin/env python3
"""Regenerate resgrad's PyTorch parity fixtures under tests/fixtures/.

DEV-TIME ONLY. Nothing in `cargo build` / `cargo test` runs this script; the
fixtures it writes are committed. It needs:

  * a Python with torch, numpy and safetensors, e.g. the venv at
    /work/torchenv:   /work/torchenv/bin/python tools/make_fixtures.py
  * the reference oracle `torch_resnet.py` in ../shared/reference
    (relative to the repository root; from a linked git worktree, relative
    to the main checkout; or $RESGRAD_REFERENCE_DIR). It is imported, not
    copied.

Every fixture is written exactly like the reference's own main():
`fixture(spec, batch, seed, double, image_size=...)` and
`save_file(tensors, path, metadata={"spec": json.dumps(spec, sort_keys=True)})`.
The stored spec is the spec as given; for dropout shortcuts the reference
evaluates the fixture with p forced to 0 (index.json marks those entries with
"dropout_forced_p0": true).

Seeds are a stable hash (CRC32) of the fixture name, so the fixtures are
distinct random draws and regeneration is reproducible.

Besides the .safetensors files it writes tests/fixtures/index.json:
  {"fixtures": [{"file", "name", "spec", "dtype", "batch", "image_size",
                 "seed", "dropout_forced_p0"}...],
   "skipped":  [{"name", "spec", "reason"}...]}
(`image_size` is null for MLP fixtures.) A spec the reference rejects is
recorded under "skipped" with the exception text instead of aborting.

The set (see plan()): f64, batch 4 unless noted
  * cifar basic depth 8, width 2, image 6: every unit x shortcut x {A, B},
    except conv1x1 and none, which only get B (A builds the same network);
  * cifar bottleneck depth 11, width 2, image 6: every unit x shortcut with
    B, plus identity and scale with A;
  * mlp 12-6x3-5: every unit x shortcut with batchnorm, and a selection
    (MLP_NOBN) without;
  * batch 2, image 5 (odd size): two cifar basic specs;
  * F32 (name suffix _f32), image 8 (two at 16): nine specs, for f32 parity
    at ~1e-4 (three of them width 8, batch 2: the direct 3x3 kernels).
About 6.5 MB in all; the bottleneck fixtures are ~73 KB each.

Usage: python tools/make_fixtures.py [--out tests/fixtures] [--only SUBSTR]
(--only writes matching fixtures and leaves index.json alone.)
"""
import argparse
import json
import os
import sys
import traceback
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference_dir():
    """<repo>/../shared/reference; from a linked git worktree, <repo> is the
    main checkout (found through git's common dir). $RESGRAD_REFERENCE_DIR
    overrides both."""
    cands = []
    if os.environ.get("RESGRAD_REFERENCE_DIR"):
        cands.append(os.environ["RESGRAD_REFERENCE_DIR"])
    cands.append(os.path.join(REPO, "..", "shared", "reference"))
    try:
        import subprocess
        common = subprocess.run(["git", "-C", REPO, "rev-parse", "--path-format=absolute", "--git-common-dir"],
                                capture_output=True, text=True, check=True).stdout.strip()
        cands.append(os.path.join(os.path.dirname(common), "..", "shared", "reference"))
    except Exception:
        pass
    for c in cands:
        if os.path.isfile(os.path.join(c, "torch_resnet.py")):
            return os.path.normpath(c)
    sys.exit("make_fixtures: torch_resnet.py not found in any of: " + ", ".join(cands))


sys.path.insert(0, _reference_dir())

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import torch_resnet  # noqa: E402

UNITS = ["original", "bn_after_add", "relu_before_add", "relu_only_preact", "full_preact"]

# (short name used in file names, shortcut object)
SHORTCUTS = [
    ("identity", {"kind": "identity"}),
    ("scale", {"kind": "scale", "shortcut": 0.7, "branch": 1.3}),
    ("exclusive_gate", {"kind": "exclusive_gate", "bias_init": -1.0}),
    ("shortcut_gate", {"kind": "shortcut_gate", "bias_init": 0.5}),
    ("conv1x1", {"kind": "conv1x1"}),
    ("dropout", {"kind": "dropout", "p": 0.5}),
    ("none", {"kind": "none"}),
]
SC = dict(SHORTCUTS)

MLP_NOBN = [
    ("original", "identity"),
    ("full_preact", "identity"),
    ("original", "scale"),
    ("full_preact", "exclusive_gate"),
    ("relu_before_add", "conv1x1"),
    ("bn_after_add", "identity"),
    ("relu_only_preact", "shortcut_gate"),
    ("relu_before_add", "scale"),
    ("full_preact", "dropout"),
    ("original", "none"),
]

BATCH = 4
CIFAR_IMAGE = 6
F32_IMAGE = 8


def cifar_spec(block, unit, sc, downsample):
    return {
        "arch": "cifar",
        "block": block,
        "depth": 8 if block == "basic" else 11,
        "unit": unit,
        "shortcut": dict(SC[sc]),
        "downsample": downsample,
        "width": 2,
        "in_channels": 3,
        "classes": 10,
    }


def mlp_spec(unit, sc, batchnorm):
    return {
        "arch": "mlp",
        "in_features": 12,
        "hidden": 6,
        "units": 3,
        "classes": 5,
        "unit": unit,
        "shortcut": dict(SC[sc]),
        "batchnorm": batchnorm,
    }


def plan():
    """Yield (name, spec, batch, image_size, double)."""
    # cifar basic, depth 8 (n=1), width 2: every unit x shortcut x {A, B}.
    # For conv1x1 and none the downsample choice builds the same network
    # (conv1x1 is its own projection; plain nets have no shortcut), so only
    # B is written for those two kinds (keeps the fixture set small; "A" as a
    # spelling is covered by every other A fixture).
    for unit in UNITS:
        for sc, _ in SHORTCUTS:
            for ds in ("A", "B") if sc not in ("conv1x1", "none") else ("B",):
                yield (f"cifar_basic_{unit}_{sc}_{ds}", cifar_spec("basic", unit, sc, ds), BATCH, CIFAR_IMAGE, True)
    # cifar bottleneck, depth 11 (n=1): every unit x shortcut with B,
    # plus identity and scale with A.
    for unit in UNITS:
        for sc, _ in SHORTCUTS:
            yield (f"cifar_bottleneck_{unit}_{sc}_B", cifar_spec("bottleneck", unit, sc, "B"), BATCH, CIFAR_IMAGE, True)
        for sc in ("identity", "scale"):
            yield (f"cifar_bottleneck_{unit}_{sc}_A", cifar_spec("bottleneck", unit, sc, "A"), BATCH, CIFAR_IMAGE, True)
    # mlp with BatchNorm1d: every unit x shortcut.
    for unit in UNITS:
        for sc, _ in SHORTCUTS:
            yield (f"mlp_bn_{unit}_{sc}", mlp_spec(unit, sc, True), BATCH, None, True)
    # mlp without BatchNorm (Linear layers get biases): a selection that
    # touches every unit placement and every shortcut kind at least once.
    for unit, sc in MLP_NOBN:
        yield (f"mlp_nobn_{unit}_{sc}", mlp_spec(unit, sc, False), BATCH, None, True)
    # odd image size, batch 2 (f64)
    yield ("cifar_basic_original_identity_A_b2_s5", cifar_spec("basic", "original", "identity", "A"), 2, 5, True)
    yield ("cifar_basic_full_preact_exclusive_gate_B_b2_s5",
           cifar_spec("basic", "full_preact", "exclusive_gate", "B"), 2, 5, True)
    # f32 fixtures, image size 8, for f32 parity at ~1e-4
    yield ("cifar_basic_full_preact_identity_B_f32", cifar_spec("basic", "full_preact", "identity", "B"), BATCH, F32_IMAGE, False)
    yield ("cifar_basic_original_identity_A_f32", cifar_spec("basic", "original", "identity", "A"), BATCH, F32_IMAGE, False)
    yield ("cifar_basic_original_exclusive_gate_B_f32",
           cifar_spec("basic", "original", "exclusive_gate", "B"), BATCH, F32_IMAGE, False)
    yield ("cifar_bottleneck_full_preact_identity_B_f32",
           cifar_spec("bottleneck", "full_preact", "identity", "B"), BATCH, F32_IMAGE, False)
    # width 8: every 3x3 stride-1 conv has channels divisible by 8, so f32
    # runs through the direct AVX-512 kernels (ops::conv2d::direct) where
    # the planes are at least 8x8 (the first stage at image 8, the first
    # two at image 16), and a BN-ReLU feeding such a conv is never stored
    # (the conv normalises as it reads)
    yield ("cifar_basic_original_identity_B_w8_f32",
           dict(cifar_spec("basic", "original", "identity", "B"), width=8), 2, F32_IMAGE, False)
    yield ("cifar_basic_full_preact_identity_B_w8_s16_f32",
           dict(cifar_spec("basic", "full_preact", "identity", "B"), width=8), 2, 16, False)
    yield ("cifar_basic_original_identity_B_w8_s16_f32",
           dict(cifar_spec("basic", "original", "identity", "B"), width=8), 2, 16, False)
    yield ("mlp_bn_original_identity_f32", mlp_spec("original", "identity", True), BATCH, None, False)
    yield ("mlp_bn_full_preact_scale_f32", mlp_spec("full_preact", "scale", True), BATCH, None, False)


def seed_of(name):
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures"))
    ap.add_argument("--only", default=None, help="only fixtures whose name contains this")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(1)
    fixtures, skipped = [], []
    for name, spec, batch, image_size, double in plan():
        if a.only and a.only not in name:
            continue
        seed = seed_of(name)
        fname = name + ".safetensors"
        try:
            t = torch_resnet.fixture(spec, batch=batch, seed=seed, double=double,
                                     image_size=image_size if image_size is not None else 8)
            save_file(t, os.path.join(a.out, fname), metadata={"spec": json.dumps(spec, sort_keys=True)})
        except Exception as e:  # record, don't crash
            reason = f"{type(e).__name__}: {e}"
            print(f"SKIP {name}: {reason}", file=sys.stderr)
            traceback.print_exc()
            skipped.append({"name": name, "spec": spec, "reason": reason})
            continue
        fixtures.append({
            "file": fname,
            "name": name,
            "spec": spec,
            "dtype": "F64" if double else "F32",
            "batch": batch,
            "image_size": image_size,
            "seed": seed,
            "dropout_forced_p0": spec["shortcut"]["kind"] == "dropout",
        })
        print(f"{fname}: {len(t)} tensors, loss {t['loss'].item():.6f}")
    if a.only is None:
        with open(os.path.join(a.out, "index.json"), "w") as f:
            json.dump({"generator": "tools/make_fixtures.py", "reference": "../shared/reference/torch_resnet.py",
                       "torch": torch.__version__, "fixtures": fixtures, "skipped": skipped},
                      f, indent=1, sort_keys=True)
            f.write("\n")
    print(f"{len(fixtures)} fixtures written, {len(skipped)} skipped")


if __name__ == "__main__":
    main()
