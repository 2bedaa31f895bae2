"""What tools/bench_torch.py and tools/e2e_torch.py share: the reference
model (`torch_resnet.Net`, found outside the repository), the CIFAR spec
they build from --depth / --unit, and the four PyTorch modes:

  f32         float32, NCHW (PyTorch's default)
  f32-cl      float32, channels-last (model and input in torch.channels_last)
  bf16        torch.autocast("cpu", dtype=torch.bfloat16) around the forward
              and the loss (the backward follows it), NCHW
  bf16-cl     the same, channels-last

The training step of both is the same: zero the gradients (kept, not set to
None), forward and cross-entropy under the mode's autocast, backward, SGD
momentum 0.9 / weight decay 1e-4.

Imported by the tools as a sibling module (`python3 tools/X.py` puts tools/
first on sys.path); it imports torch only inside its functions, so --help
and argument errors work without it.
"""
import os
import sys
from pathlib import Path

MODES = ("f32", "f32-cl", "bf16", "bf16-cl")


def find_reference(tool):
    """The directory of torch_resnet.py: $RESGRAD_REFERENCE_DIR, then
    <repo>/../shared/reference, then /work/shared/reference (never copied
    into the repository); exits naming `tool` when there is none."""
    here = Path(__file__).resolve().parent.parent
    cands = []
    if os.environ.get("RESGRAD_REFERENCE_DIR"):
        cands.append(Path(os.environ["RESGRAD_REFERENCE_DIR"]))
    cands += [here.parent / "shared" / "reference", Path("/work/shared/reference")]
    for c in cands:
        if (c / "torch_resnet.py").is_file():
            return c
    sys.exit(tool + ": torch_resnet.py not found in " + ", ".join(map(str, cands)))


def reference_net(tool):
    """The reference model class, `torch_resnet.Net`."""
    sys.path.insert(0, str(find_reference(tool)))
    from torch_resnet import Net
    return Net


def cifar_spec(depth, unit, block="basic"):
    """The spec of a CIFAR ResNet with identity shortcuts, downsampling B."""
    return {"arch": "cifar", "depth": depth, "block": block, "unit": unit,
            "shortcut": {"kind": "identity"}, "downsample": "B"}


def model_name(spec):
    return "resnet-{} {} identity B".format(spec.get("depth"), spec["unit"])


class Mode:
    """One of MODES: the memory format of the model and its inputs, and
    whether the forward and the loss run under bf16 autocast."""

    def __init__(self, torch, name):
        if name not in MODES:
            raise ValueError("unknown mode %r (one of %s)" % (name, ", ".join(MODES)))
        self.torch = torch
        self.name = name
        self.fmt = torch.channels_last if name.endswith("-cl") else torch.contiguous_format
        self.bf16 = name.startswith("bf16")

    def autocast(self):
        """The forward's context: bf16 autocast on the CPU, or nothing."""
        return self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.bf16)

    def input(self, x):
        """A batch (a tensor) in the mode's memory format."""
        return x.to(memory_format=self.fmt)


class Trainer:
    """A fresh `Net(spec)` in training mode and the mode's memory format,
    SGD (momentum 0.9, weight decay 1e-4) at `lr`, cross-entropy."""

    def __init__(self, torch, Net, spec, mode, lr):
        self.mode = mode
        self.net = Net(spec).float().train().to(memory_format=mode.fmt)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=0.9,
                                   weight_decay=1e-4)
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def step(self, x, y):
        """One training step on the batch (x, y); x already in the mode's format."""
        self.opt.zero_grad(set_to_none=False)
        with self.mode.autocast():
            loss = self.loss_fn(self.net(x), y)
        loss.backward()
        self.opt.step()
        return loss
