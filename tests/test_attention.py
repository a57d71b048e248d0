"""The CPU grouped-query attention computes what transformers' SDPA attention does."""

from __future__ import annotations

import types

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lsp_server.engine.attention import grouped_sdpa_attention


@pytest.mark.parametrize("tokens,masked", [(1, False), (1, True), (7, True)])
def test_grouped_attention_equals_stock_sdpa(tokens, masked):
    torch.manual_seed(tokens)
    module = types.SimpleNamespace(num_key_value_groups=3, is_causal=True)
    past = 40
    query = torch.randn(1, 6, tokens, 16)
    key, value = torch.randn(1, 2, past + tokens, 16), torch.randn(1, 2, past + tokens, 16)
    mask = None
    if masked:  # a tree-like mask: everyone sees the cache, each row some random earlier rows and itself
        allowed = torch.ones(tokens, past + tokens, dtype=torch.bool)
        allowed[:, past:] = torch.rand(tokens, tokens) > 0.5
        allowed[:, past:] &= torch.ones(tokens, tokens, dtype=torch.bool).tril()
        allowed[:, past:] |= torch.eye(tokens, dtype=torch.bool)
        mask = torch.zeros(1, 1, tokens, past + tokens).masked_fill(~allowed, torch.finfo(torch.float32).min)
    ours, _ = grouped_sdpa_attention(module, query, key, value, mask, scaling=0.25)
    stock, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert ours.shape == stock.shape == (1, tokens, 6, 16)
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)


def test_cpu_models_load_with_the_grouped_attention(tiny_loaded):
    assert tiny_loaded.model.config._attn_implementation == "swiftguard_grouped_sdpa"
