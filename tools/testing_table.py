#!/usr/bin/env python3
"""Print the bad-input table of TESTING.md from the CASE lines that
tests/bad_input.rs prints:

    cargo test --release --test bad_input -- --nocapture --test-threads 1 \
        | grep -o 'CASE.*' | python3 tools/testing_table.py
"""
import re
import sys

# section -> (command template, cases in order of appearance)
SECTIONS = [
    ("CIFAR-10 / CIFAR-100 readers", "resgrad train --data cifar10:D (cifar100:D) --arch mlp --units 1 --hidden 8 --iters 1 --batch 4", "cifar"),
    ("MNIST (IDX) reader", "resgrad train --data mnist:D --arch mlp --units 1 --hidden 8 --iters 1 --batch 4", "mnist"),
    ("NumPy .npz arrays", "resgrad train --data npz:F --arch mlp --units 1 --hidden 8 --iters 1 --batch 4", "npz"),
    ("Model specs", "resgrad grads --spec S.json --weights W --input W --out O (and train --spec)", "spec"),
    ("Safetensors weights and inputs", "resgrad grads --spec S --weights W --input X --out O (mlp 4-3x1-3)", "st"),
    ("Outputs: unwritable, not a file, full disk", "as given", "out"),
    ("Run directories and config files", "resgrad train --resume D / --config C", "resume"),
    ("Command-line values", "resgrad train --arch mlp --units 1 --hidden 8 ...", "cli"),
]


def section(case):
    c = case.lower()
    if c.startswith(("cifar10", "cifar100")) and "hidden" not in c:
        return "cifar"
    if c.startswith("mnist"):
        return "mnist"
    if c.startswith("npz"):
        return "npz"
    if "disk" in c or "--out" in c or "--json" in c:
        return "out"
    if c.startswith(("resume", "train --config")):
        return "resume"
    if c in ("unknown data set", "data set without directory", "unknown shortcut", "batch 1",
             "batch larger than the data", "lr nan", "lr negative", "momentum 1", "val too large",
             "val too large with epochs", "not a number", "unknown flag", "hidden absurd") or (
                 c == "unknown arch" and SEEN.get("unknown arch", 0) == 0):
        return "cli"
    if any(w in c for w in ("weight", "header", "tensor", "input", "label", "byte", "overlap",
                            "duplicate", "dimension", "metadata", "5-byte", "data")) and c not in (
                                "cifar with hidden",):
        return "st"
    if c == "empty file" and SEEN.get("empty file", 0) == 0:
        return "st"
    return "spec"


SEEN = {}
rows = {k: [] for _, _, k in SECTIONS}
for line in sys.stdin:
    parts = line.rstrip("\n").split("\t")
    if len(parts) < 4 or parts[0] != "CASE":
        continue
    case, code, msg = parts[1], parts[2], parts[3]
    msg = re.sub(r"/tmp/resgrad-bad-[a-z0-9-]+", "T", msg)
    msg = re.sub(r"\.tmp\.\d+\.\d+", ".tmp.PID.N", msg)
    if len(msg) > 170:
        msg = msg[:167] + "..."
    rows[section(case)].append((case, msg, code))
    SEEN[case] = SEEN.get(case, 0) + 1

for title, cmd, key in SECTIONS:
    print(f"### {title}\n\nCommand: `{cmd}`\n")
    print("| case | expected message (stderr, first line; T = the test's temp dir) | exit |")
    print("|---|---|---|")
    for case, msg, code in rows[key]:
        msg = msg.replace("|", "\\|")
        code_span = f"`` {msg} ``" if "`" in msg else f"`{msg}`"
        print(f"| {case} | {code_span} | {code} |")
    print()
