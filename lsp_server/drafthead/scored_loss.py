"""The draft head's training loss: cross-entropy of predicted states scored against frozen
LM-head rows, computed a few rows at a time with its gradient worked out on the way.

The plain form, ``cross_entropy(predicted @ rows.T, targets)``, keeps a float32 logit matrix
of every position against the whole vocabulary (2,048 positions x 16,384 tokens, 134 MB, per
unrolled step) and walks it a dozen times: the cast to float32, log-softmax, its backward,
zero-filled gradients, the cast back for the product.  On the 2-core AMX Xeon (December 5)
those walks, not the products, were two thirds of a training step: a torch profile of two
steps at the build's shapes gave log-softmax and its backward 34% of the time, copies 18% and
fills 16%, the products 15%.

The rows are frozen (the model's own LM head), so the loss's gradient with respect to a
prediction is ``(softmax(logits) - onehot(target)) @ rows``, known as soon as the logits are.
Computing it chunk by chunk in the forward pass (as fused linear cross-entropy kernels on GPUs
do) keeps each chunk's logits in the CPU's caches and never stores them: the same step at the
build's shapes took 0.95-0.98 s against 1.68-1.88 s (synthetic data, back to back).  The
arithmetic is the one autocast did before: products in the rows' dtype, softmax in float32.
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_ROWS = 128
"""Positions per chunk: 128 x 16,384 float32 logits are 8 MB.  One loss at the build's shapes
(2,048 positions, bf16 products) took 0.21 s in one chunk, 0.17 s in chunks of 512, 0.14 s of 256,
0.13 s of 128 and 0.15 s of 64, against 0.24 s for the plain form (its backward included)."""


class _ScoredCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over the positions whose target is not negative; see the module."""

    @staticmethod
    def forward(ctx: Any, predicted: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
                chunk: int) -> torch.Tensor:
        gradient = torch.empty(predicted.shape, dtype=torch.float32, device=predicted.device)
        total = torch.zeros((), dtype=torch.float64, device=predicted.device)
        counted = torch.zeros((), dtype=torch.int64, device=predicted.device)
        with torch.autocast(predicted.device.type, enabled=False):
            for start in range(0, len(predicted), chunk):
                target = targets[start : start + chunk]
                scored = target >= 0
                picked = target.clamp(min=0)[:, None]
                logits = (predicted[start : start + chunk].detach().to(rows.dtype) @ rows.T).float()
                normalizer = torch.logsumexp(logits, dim=-1, keepdim=True)
                total += ((normalizer[:, 0] - logits.gather(1, picked)[:, 0]) * scored).sum()
                counted += scored.sum()
                probabilities = logits.sub_(normalizer).exp_()
                probabilities.scatter_add_(1, picked, -scored[:, None].float())
                probabilities.mul_(scored[:, None])
                gradient[start : start + chunk] = (probabilities.to(rows.dtype) @ rows).float()
        count = counted.clamp(min=1)
        ctx.save_for_backward(gradient.div_(count))
        ctx.dtype = predicted.dtype
        return (total / count).float()

    @staticmethod
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (gradient,) = ctx.saved_tensors
        return (gradient * upstream).to(ctx.dtype), None, None, None


def scored_cross_entropy(predicted: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
                         chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """``cross_entropy(predicted @ rows.T, targets, ignore_index=-1)`` for predicted states
    [N, hidden] (float32, may require grad), frozen score rows [vocab, hidden] (their dtype is
    the products'), targets [N] (-1: not scored); 0 where no position is scored (the plain form
    gives NaN there).  The gradient reaches ``predicted`` only."""
    return _ScoredCrossEntropy.apply(predicted, rows, targets, chunk)
