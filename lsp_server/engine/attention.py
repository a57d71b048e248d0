"""Grouped-query attention that is fast for decoding passes on a CPU.

Models like Qwen2.5-Coder share each key/value head among several query heads.  For a
pass of a few tokens (one token of plain decoding, or a small verification tree),
PyTorch's CPU ``scaled_dot_product_attention`` with ``enable_gqa`` or with repeated
key/value heads was measured here at 1.15 ms per layer for one token against a
2k-token cache; laying the query heads that share a key/value head out as extra query
rows of that head computes the same attention in 0.08 ms (0.53 instead of 0.61-0.73 ms
for a 9-token tree).  Over 24 layers that is about a third of a plain decoding pass.
Prompt passes (many tokens, causal, no explicit mask) keep the stock SDPA path.

Installed for every model loaded on a CPU, so plain greedy decoding and speculation
both profit and benchmark ratios compare decoding strategies, not attention kernels.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "swiftguard_grouped_sdpa"
MAX_GROUPED_QUERY = 64
"""Passes of more query tokens than this (prompts) take the stock path."""


def grouped_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Same contract as transformers' SDPA attention: returns [batch, tokens, heads, dim]."""
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, tokens, dim = query.shape
    one_token_or_masked = tokens == 1 or attention_mask is not None
    if groups == 1 or tokens > MAX_GROUPED_QUERY or not one_token_or_masked or dropout or kwargs.get("softcap"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # Query head h uses key/value head h // groups: its rows go under that head.
    grouped = query.reshape(batch, heads // groups, groups * tokens, dim)
    # Row g * tokens + i of a head's grouped query is token i: repeat the mask's rows alike.
    mask = attention_mask.repeat(1, 1, groups, 1) if attention_mask is not None else None
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, tokens, dim).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make the attention available to ``from_pretrained(attn_implementation=...)``."""
    AttentionInterface.register(NAME, grouped_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
