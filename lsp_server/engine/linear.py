"""CPU linear layers: fast on few rows, and exact whatever the number of rows.

Speed.  On a CPU, ``torch.nn.functional.linear`` in bf16 goes to oneDNN, which reorders
the whole weight into its blocked layout on every call.  Decoding multiplies a few rows
by every weight matrix of the model, so that reorder (a full extra read and write of
the weights) costs more than the product itself.  The weights are therefore reordered
once, at load time, and each call runs oneDNN's product on the packed weight.  Measured
on the default model here (2 cores, bf16): a 1-token pass over the model body 55.7 ->
35.4 ms, a 17-token tree pass 79.9 -> 49.7 ms, the LM head on 17 rows 19.9 -> 8.6 ms.
The packed product gives the same bits as the unpacked one for a 300-row prompt.

Exactness.  A product with a single input row takes a matrix-vector kernel that splits
the long inner dimension across threads; products of two rows or more take a
matrix-matrix kernel that does not.  For Qwen2.5-Coder-0.5B's MLP down projection
(4864 -> 896) the single-row result differs in the last bit for some inputs (11 of 32
random rows unpacked, 1 of 9 packed), so a token decoded alone (plain greedy decoding) and the same token inside a
verification tree got different hidden states, and bf16 speculation flipped greedy
near-ties.  A single row is therefore computed as two copies of it: every row then gets
the same bits whatever the row count (checked for 2 to 2,100 rows, packed or not).
"""

from __future__ import annotations

import ctypes
import logging

import torch

log = logging.getLogger(__name__)

_PACK_ROWS_HINT = 16
"""The row count oneDNN is told to expect when it picks the packed layout (a decoding pass)."""


def _pairs(input: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``input`` as a 2-D matrix of at least two rows; True if a single row was doubled."""
    rows = input.reshape(-1, input.shape[-1])
    if rows.shape[0] == 1:
        return torch.cat([rows, rows]), True
    return rows, False


class RowInvariantLinear(torch.nn.Linear):
    """``nn.Linear`` that never hands its kernel a single row (where packing is not available)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows, doubled = _pairs(input)
        out = torch.nn.functional.linear(rows, self.weight, self.bias)
        return (out[:1] if doubled else out).reshape(*input.shape[:-1], self.out_features)


class PackedLinear(torch.nn.Linear):
    """``nn.Linear`` on a weight reordered once for oneDNN; single rows as two."""

    packed: torch.Tensor

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows, doubled = _pairs(input)
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return (out[:1] if doubled else out).reshape(*input.shape[:-1], self.out_features)


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACK_ROWS_HINT)


def packing_works(dtype: torch.dtype) -> bool:
    """Whether this PyTorch build can pack CPU weights of ``dtype`` and gets a correct product."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(48, 32, generator=generator).to(dtype)
        rows = torch.randn(3, 32, generator=generator).to(dtype)
        out = torch.ops.mkldnn._linear_pointwise(rows, _pack(weight), None, "none", [], "")
        return bool(torch.allclose(out.float(), (rows.float() @ weight.float().T), atol=0.1, rtol=0.05))
    except (RuntimeError, AttributeError) as exc:  # no oneDNN op, or no kernel for this dtype/CPU
        log.info("oneDNN weight packing unavailable (%s): plain linear kernels", exc)
        return False


def install_row_invariant(model: torch.nn.Module, pack: bool = True, keep_half: bool = False) -> str:
    """Make every plain ``nn.Linear`` of ``model`` row-invariant, in place, packed when ``pack``
    and this build allows it; returns the kernel used ("packed" or "plain").

    A packed layer drops its unpacked weight (the memory would double otherwise), except
    a weight shared with another module (an LM head tied to the input embeddings); with
    ``keep_half`` it keeps a float16 copy as ``weight16`` first (for
    ``speculation.model_draft``: oneDNN has no way back from its packed layout).
    """
    linears = [module for module in model.modules() if type(module) is torch.nn.Linear]
    dtype = linears[0].weight.dtype if linears else torch.float32
    if not (pack and linears and packing_works(dtype)):
        for module in linears:
            module.__class__ = RowInvariantLinear
        return "plain"
    shared = {id(p) for m in model.modules() if type(m) is not torch.nn.Linear for p in m.parameters(recurse=False)}
    for module in linears:
        module.packed = _pack(module.weight)
        module.__class__ = PackedLinear
        if id(module.weight) not in shared:
            if keep_half:
                module.weight16 = module.weight.detach().to(torch.float16)
            module.weight = torch.nn.Parameter(module.weight.new_empty(0), requires_grad=False)
    _return_freed_memory()
    return "packed"


def _return_freed_memory() -> None:
    """Hand the unpacked weights' freed pages back to the OS: glibc keeps them otherwise
    (default model: 2,344 MB resident after packing, 1,678 MB after this; 1,676 unpacked)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
