"""Linear layers whose result for a token does not depend on how many tokens share the pass.

On this CPU (PyTorch 2.13, oneDNN/MKL, bf16), a product with a single input row takes a
matrix-vector kernel that splits the long inner dimension across threads; products of
two rows or more take a matrix-matrix kernel that does not.  For Qwen2.5-Coder-0.5B's
MLP down projection (4864 -> 896) the single-row result differs in the last bit for about
a third of inputs, so a token decoded alone (plain greedy decoding) and the same token
inside a verification tree got different hidden states, and bf16 speculation flipped
greedy near-ties.  Computing a single row as two copies of it takes the matrix-matrix
kernel, which gives every row the same bits whatever the row count (checked for 2 to 80
rows); it costs nothing measurable (0.122 vs 0.130 ms for the down projection).
"""

from __future__ import annotations

import torch


class RowInvariantLinear(torch.nn.Linear):
    """``nn.Linear`` that never hands its kernel a single row."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.numel() != input.shape[-1]:
            return super().forward(input)
        row = input.reshape(1, -1)
        out = torch.nn.functional.linear(torch.cat([row, row]), self.weight, self.bias)[:1]
        return out.reshape(*input.shape[:-1], -1)


def install_row_invariant(model: torch.nn.Module) -> int:
    """Make every plain ``nn.Linear`` of ``model`` row-invariant, in place; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = RowInvariantLinear
            count += 1
    return count
