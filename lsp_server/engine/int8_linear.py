"""Linear layers with int8 weights, for products whose results need not be exact.

The draft head's products only rank guesses that the model then verifies, so their low
bits do not matter, but their time does: a few rows times a weight that the verification
pass has pushed out of the CPU caches is bound by reading the weight.  Stored as int8 with
one scale per output row, a weight is half its bf16 bytes.  Measured here (2 cores, AMX,
caches flushed before each call): the head's 16,384 score rows on one row 1.39 -> 1.05 ms,
its MLP's up and down projections on two rows 0.28 -> 0.16 ms each, against oneDNN's
packed bf16 product (``engine.linear``).  On the 2-core AMD EPYC without AMX (December 4,
40 interleaved trees, each after a one-token pass of the model, idle machine) the whole
head's ``tree()`` took 5.97 ms with int8 weights against 7.07 ms in bf16 (medians), so int8
stays the default there too.

The kernel is PyTorch's weight-only int8 product (``aten._weight_int8pack_mm``, what
torchao's int8 weight-only quantization calls).  It is a CPU kernel, and this build
crashed on an inner dimension that is not a multiple of 8, so such layers are left as they
are, and so are all where the build lacks the kernel (``quantize_linears``).
"""

from __future__ import annotations

import functools

import torch

ALIGNMENT = 8
"""Inner dimensions the int8 kernel is used for must be multiples of this."""


class Int8Linear(torch.nn.Module):
    """``y = x W^T + b`` with ``W`` stored as int8 rows times a scale per row (symmetric, round to nearest)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        self.register_buffer("weight_int8", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        out = torch.ops.aten._weight_int8pack_mm(rows, self.weight_int8, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


@functools.cache
def kernel_available() -> bool:
    """Whether this PyTorch build has the int8 kernel and it computes a small product right
    (it is a private op: another build may lack it)."""
    try:
        weight = torch.tensor([[1] * 8, [-1, 2] * 4], dtype=torch.int8)
        out = torch.ops.aten._weight_int8pack_mm(torch.ones(1, 8), weight, torch.tensor([1.0, 0.5]))
        return bool(torch.equal(out, torch.tensor([[8.0, 2.0]])))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def quantizable(linear: torch.nn.Linear) -> bool:
    """Whether ``linear`` can take int8 weights here: a CPU layer with an aligned inner dimension,
    and the kernel in this build."""
    return linear.weight.device.type == "cpu" and linear.in_features % ALIGNMENT == 0 and kernel_available()


def quantize_linears(module: torch.nn.Module) -> int:
    """Replace, in place, every plain ``nn.Linear`` below ``module`` (and ``module`` itself is
    not replaced) that ``quantizable`` allows by an ``Int8Linear``; returns how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and quantizable(child):
                setattr(parent, name, Int8Linear(child))
                count += 1
    return count
