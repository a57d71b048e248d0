"""The greedy token of a row of logits, as every decoding path here picks it."""

from __future__ import annotations

import torch


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over the last dimension, taken in float32.

    The same pick as in the logits' own dtype (bf16 -> float32 is exact, and both take the
    first maximum, as ``generate`` does on its float32 logits), but PyTorch's CPU argmax
    over a 151,936-token bf16 row took 0.49 ms here against 0.10 ms converted first.
    """
    return logits.float().argmax(-1)
