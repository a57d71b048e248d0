"""The CPU decoding kernels: attention and linear layers give a token the same bits
whether it is decoded alone or inside a verification tree, and attention computes what
transformers' SDPA attention does."""

from __future__ import annotations

import types

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lsp_server.engine.attention import BLOCK, decoding_attention
from lsp_server.engine.linear import (
    PROMPT_ROWS,
    PackedLinear,
    RowInvariantLinear,
    install_row_invariant,
    packing_works,
    rows_per_call,
    rows_unlimited,
    tree_rows_apart,
)
from lsp_server.engine.speculation.draft_tree import DraftTree
from lsp_server.engine.speculation.verify import tree_attention_mask

MODULE = types.SimpleNamespace(num_key_value_groups=3, is_causal=True)
GROUPED = {groups: types.SimpleNamespace(num_key_value_groups=groups, is_causal=True) for groups in (1, 2, 3, 6, 7, 8)}


def random_tree(past: int, tokens: int, generator: torch.Generator, pending: int = 1) -> torch.Tensor:
    """[tokens, past + tokens] visibility of a verification pass: the pending tokens (the last
    is the root) and a random tree of ``tokens - pending`` nodes under it, as the verifier builds it."""
    parents = [int(torch.randint(-1, i, (1,), generator=generator)) for i in range(tokens - pending)]
    depths: list[int] = []
    for parent in parents:
        depths.append(1 if parent == -1 else depths[parent] + 1)
    n = len(parents)
    tree = DraftTree([0] * n, parents, depths, [1.0] * n, [frozenset()] * n)
    return tree_attention_mask(past, pending, tree, torch.float32)[0, 0] == 0


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


# Cases: no cache part, a cache part, a tree that reaches the next block, a long cache, the
# largest tree (64 nodes and the pending token), and 5, 14 and 23 tokens, whose 7 query heads
# per key/value head leave 3, 2 and 1 rows for the flash kernel's last block of 32 rows.
CASES = [(40, 7), (BLOCK + 30, 12), (2 * BLOCK - 5, 24), (2000, 17), (300, 65), (300, 5), (1000, 14), (2000, 23)]


@pytest.mark.parametrize("past,tokens", CASES)
@pytest.mark.parametrize("groups", [1, 2, 3, 6, 7, 8])
def test_a_tree_token_gets_the_bits_of_decoding_it_alone(past, tokens, groups):
    """Bit for bit in bf16, the dtype where rounding noise flips greedy choices.  (In fp32
    the stock flash kernel itself gives a token different last bits depending on the pass
    when query heads per key/value head are 1 or 3 and MKL threads inside it; fp32 noise
    that small has not flipped a token in any test or benchmark, and stays checked there.)"""
    generator = torch.Generator().manual_seed(past + tokens)
    heads = 2 * groups
    query = torch.randn(1, heads, tokens, 64, generator=generator).to(torch.bfloat16)
    key = torch.randn(1, 2, past + tokens, 64, generator=generator).to(torch.bfloat16)
    value = torch.randn(1, 2, past + tokens, 64, generator=generator).to(torch.bfloat16)
    allowed = random_tree(past, tokens, generator)
    tree, _ = decoding_attention(GROUPED[groups], query, key, value, additive(allowed, torch.bfloat16), scaling=0.125)
    for token in range(tokens):
        keys = allowed[token].nonzero().flatten()  # its own sequence: the cache, its ancestors, itself
        alone, _ = decoding_attention(GROUPED[groups], query[:, :, token : token + 1], key[:, :, keys],
                                      value[:, :, keys], None, scaling=0.125)
        assert torch.equal(alone[:, 0], tree[:, token]), f"token {token} of {tokens} after {past}"


# A prompt with a tree after it (a request's first pass): longer than a tree may be, crossing a
# block boundary inside the prompt, inside the tree, and a short prompt left to the tree plan.
@pytest.mark.parametrize("past,pending,nodes", [(0, 300, 24), (100, 200, 40), (BLOCK - 20, 30, 30), (0, 5, 12)])
def test_a_prompt_and_tree_token_gets_the_bits_of_decoding_it_alone(past, pending, nodes):
    generator = torch.Generator().manual_seed(past + pending)
    tokens = pending + nodes
    query = torch.randn(1, 14, tokens, 64, generator=generator).to(torch.bfloat16)
    key = torch.randn(1, 2, past + tokens, 64, generator=generator).to(torch.bfloat16)
    value = torch.randn(1, 2, past + tokens, 64, generator=generator).to(torch.bfloat16)
    allowed = random_tree(past, tokens, generator, pending)
    together, _ = decoding_attention(GROUPED[7], query, key, value, additive(allowed, torch.bfloat16), scaling=0.125)
    for token in [*range(0, pending, 7), *range(pending - 1, tokens)]:
        keys = allowed[token].nonzero().flatten()
        alone, _ = decoding_attention(GROUPED[7], query[:, :, token : token + 1], key[:, :, keys], value[:, :, keys],
                                      None, scaling=0.125)
        assert torch.equal(alone[:, 0], together[:, token]), f"token {token} of {tokens} after {past}"


@pytest.mark.parametrize("past,tokens", [(0, 300), (100, 200), (2 * BLOCK - 3, 7), (1000, 1)])
@pytest.mark.parametrize("explicit_mask", [False, True])
def test_a_prompt_token_gets_the_bits_of_decoding_it_alone(past, tokens, explicit_mask):
    """A prompt, or the new part of one after a reused cache, is computed as if decoded token by
    token: prefill, reuse and decoding cannot disagree in the last bit (where the layer's
    projections keep that too: see the next test)."""
    generator = torch.Generator().manual_seed(past + tokens)
    query = torch.randn(1, 14, tokens, 64, generator=generator).to(torch.bfloat16)
    key = torch.randn(1, 2, past + tokens, 64, generator=generator).to(torch.bfloat16)
    value = torch.randn(1, 2, past + tokens, 64, generator=generator).to(torch.bfloat16)
    causal = torch.ones(tokens, past + tokens, dtype=torch.bool).tril(past)
    mask = additive(causal, torch.bfloat16) if explicit_mask else None
    chunk, _ = decoding_attention(GROUPED[7], query, key, value, mask, scaling=0.125)
    for token in range(0, tokens, 7):
        end = past + token + 1
        alone, _ = decoding_attention(GROUPED[7], query[:, :, token : token + 1], key[:, :, :end], value[:, :, :end],
                                      None, scaling=0.125)
        assert torch.equal(alone[:, 0], chunk[:, token]), f"token {token} of {tokens} after {past}"
    stock, _ = sdpa_attention_forward(GROUPED[7], query.float(), key.float(), value.float(),
                                      additive(causal, torch.float32), scaling=0.125)
    torch.testing.assert_close(chunk.float(), stock, rtol=0.02, atol=0.01)


class _LimitedAttention(torch.nn.Module):
    """An attention layer whose projections have a row limit per call, as on AMX: they
    compute a long prompt in one call, with other bits than a chunk of it gets."""

    num_key_value_groups = 7
    is_causal = True

    def __init__(self) -> None:
        super().__init__()
        self.o_proj = torch.nn.Linear(4, 4)
        self.o_proj.max_rows = 32


@pytest.mark.parametrize("nodes", [0, 1, 24])
@pytest.mark.parametrize("explicit_mask", [False, True])
def test_a_fresh_long_prompt_is_one_stock_call_with_or_without_a_tree_after_it(nodes, explicit_mask):
    """Where the projections already give a long prompt one call's bits, a prompt with no
    cache before it and more than ``PROMPT_ROWS`` tokens (what plain decoding's prefill and
    speculation's first pass both compute) takes stock causal SDPA, 1.7x faster at 1,024
    tokens here; a tree riding on it still gets its decoding bits."""
    module = _LimitedAttention()
    generator = torch.Generator().manual_seed(nodes)
    pending = 300
    tokens = pending + nodes
    query = torch.randn(1, 14, tokens, 64, generator=generator).to(torch.bfloat16)
    key = torch.randn(1, 2, tokens, 64, generator=generator).to(torch.bfloat16)
    value = torch.randn(1, 2, tokens, 64, generator=generator).to(torch.bfloat16)
    causal = torch.ones(pending, pending, dtype=torch.bool).tril()
    stock, _ = sdpa_attention_forward(module, query[:, :, :pending], key[:, :, :pending].contiguous(),
                                      value[:, :, :pending].contiguous(), None, scaling=0.125, is_causal=True)
    prompt_only, _ = decoding_attention(module, query[:, :, :pending], key[:, :, :pending],
                                        value[:, :, :pending], additive(causal, torch.bfloat16) if explicit_mask else None,
                                        scaling=0.125)
    assert torch.equal(prompt_only, stock)
    allowed = random_tree(0, tokens, generator, pending)
    with tree_rows_apart(nodes):
        together, _ = decoding_attention(module, query, key, value, additive(allowed, torch.bfloat16), scaling=0.125)
    assert torch.equal(together[:, :pending], stock)
    for token in range(pending, tokens):
        keys = allowed[token].nonzero().flatten()
        alone, _ = decoding_attention(module, query[:, :, token : token + 1], key[:, :, keys], value[:, :, keys],
                                      None, scaling=0.125)
        assert torch.equal(alone[:, 0], together[:, token]), f"tree token {token}"


@pytest.mark.parametrize("past,tokens", CASES)
def test_decoding_attention_equals_stock_sdpa(past, tokens):
    generator = torch.Generator().manual_seed(tokens)
    query = torch.randn(1, 6, tokens, 16, generator=generator)
    key = torch.randn(1, 2, past + tokens, 16, generator=generator)
    value = torch.randn(1, 2, past + tokens, 16, generator=generator)
    mask = additive(random_tree(past, tokens, generator), torch.float32)
    ours, _ = decoding_attention(MODULE, query, key, value, mask, scaling=0.25)
    stock, _ = sdpa_attention_forward(MODULE, query, key, value, mask, scaling=0.25)
    assert ours.shape == stock.shape == (1, tokens, 6, 16)
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)


def test_a_causal_prompt_is_computed_like_a_chain():
    query, key, value = torch.randn(1, 6, 5, 16), torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    causal, _ = decoding_attention(MODULE, query, key, value, None, scaling=0.25)
    chain = torch.ones(5, 5, dtype=torch.bool).tril()
    masked, _ = decoding_attention(MODULE, query, key, value, additive(chain, torch.float32), scaling=0.25)
    assert torch.equal(causal, masked)


def test_a_mask_hiding_cache_positions_takes_the_stock_path():
    query, key, value = torch.randn(1, 6, 2, 16), torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16)
    allowed = torch.ones(2, 10, dtype=torch.bool).tril(8)
    allowed[:, 0] = False  # left padding
    mask = additive(allowed, torch.float32)
    ours, _ = decoding_attention(MODULE, query, key, value, mask, scaling=0.25)
    stock, _ = sdpa_attention_forward(MODULE, query, key, value, mask, scaling=0.25)
    assert torch.equal(ours, stock)


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_single_row_gets_the_bits_it_gets_among_others(pack, dtype):
    torch.manual_seed(0)
    layer = torch.nn.Linear(4864, 896, bias=False).to(dtype)
    reference = layer.weight.detach().clone()
    kernel = install_row_invariant(torch.nn.Sequential(layer), pack=pack).split()[0]
    assert kernel == ("packed" if pack and packing_works(dtype) else "plain")
    assert isinstance(layer, PackedLinear if kernel == "packed" else RowInvariantLinear)
    rows = torch.randn(1, 70, 4864).to(dtype)
    together = layer(rows)
    expected = rows.float() @ reference.float().T
    assert torch.allclose(together.float(), expected, atol=0.05 if dtype == torch.bfloat16 else 1e-3, rtol=0.02)
    if kernel == "plain" and dtype == torch.float32:
        pytest.skip("MKL's unpacked fp32 product varies with the row count: fp32 is bit-exact only packed")
    for index in range(16):
        assert torch.equal(layer(rows[:, index : index + 1]), together[:, index : index + 1])
        assert torch.equal(layer(rows[0, index]), together[0, index])  # a 1-D input keeps its shape
    for size in (2, 3, 7, 17, 33, 64):  # more than 32 rows: several calls where this CPU needs them
        assert torch.equal(layer(rows[:, 5 : 5 + size]), together[:, 5 : 5 + size])


def test_packing_keeps_a_weight_shared_with_the_embeddings_and_drops_the_others():
    if not packing_works(torch.float32):
        pytest.skip("no oneDNN weight packing in this PyTorch build")
    embedding = torch.nn.Embedding(50, 8)
    head, projection = torch.nn.Linear(8, 50, bias=False), torch.nn.Linear(8, 8)
    head.weight = embedding.weight  # tied, as in Qwen2.5-Coder-0.5B
    model = torch.nn.ModuleDict({"embed": embedding, "proj": projection, "head": head})
    before = head(projection(embedding(torch.tensor([[1, 2, 3]])))).detach()
    assert install_row_invariant(model).startswith("packed")
    assert head.weight is embedding.weight and projection.weight.numel() == 0
    assert (head.in_features, head.out_features) == (8, 50)
    assert torch.allclose(head(projection(embedding(torch.tensor([[1, 2, 3]])))), before, atol=1e-5)


def test_cpu_models_load_with_the_decoding_kernels(tiny_loaded):
    assert tiny_loaded.model.config._attn_implementation == "swiftguard_row_invariant"
    assert all(type(m) is not torch.nn.Linear for m in tiny_loaded.model.modules())


class _BlockedAbove(RowInvariantLinear):
    """A kernel whose rows get other bits in calls of more than ``rows`` rows (as oneDNN's
    bf16 product does above 32 rows on a CPU with AMX)."""

    rows = 32

    def _product(self, rows: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.linear(rows, self.weight, self.bias)
        return out + 1e-3 if rows.shape[0] > self.rows else out


class _ByCallSize(RowInvariantLinear):
    """A kernel whose rows get other bits in every call size: no limit helps."""

    def _product(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(rows, self.weight, self.bias) + 1e-3 * rows.shape[0]


@pytest.mark.parametrize("threshold, expected", [(1000, None), (32, 32), (20, 16)])
def test_the_probe_finds_the_largest_call_size_that_keeps_a_rows_bits(threshold, expected):
    layer = torch.nn.Linear(16, 8)
    layer.__class__ = _BlockedAbove
    layer.rows = threshold
    assert rows_per_call([layer]) == expected
    assert layer.max_rows == expected
    rows = torch.randn(50, 16)
    alone = torch.cat([layer(row[None]) for row in rows])
    assert torch.equal(layer(rows), alone)  # with the limit found, 50 rows at once get their own bits
    layer.max_rows = None
    assert torch.equal(layer(rows), alone) == (expected is None)  # without it, only a kernel that needs none does


def test_batch_work_lifts_the_row_limit_and_decoding_keeps_it():
    layer = torch.nn.Linear(16, 8)
    layer.__class__ = _BlockedAbove
    rows_per_call([layer])
    rows = torch.randn(50, 16)
    split = layer(rows)
    with rows_unlimited():
        whole = layer(rows)  # one call of 50 rows: the kernel's other bits show
    assert torch.equal(whole, torch.nn.functional.linear(rows, layer.weight, layer.bias) + 1e-3)
    assert not torch.equal(whole, split)
    assert torch.equal(layer(rows), split) and layer.max_rows == 32  # outside the block, calls are split again


def test_the_probe_warns_when_no_call_size_keeps_a_rows_bits(caplog):
    layer = torch.nn.Linear(16, 8)
    layer.__class__ = _ByCallSize
    with caplog.at_level("WARNING"):
        assert rows_per_call([layer]) == 16
    assert "near-tied" in caplog.text


def test_a_prompt_is_one_call_and_the_tree_after_it_gets_its_decoding_bits():
    layer = torch.nn.Linear(16, 8)
    layer.__class__ = _BlockedAbove
    rows_per_call([layer])
    prompt, tree = torch.randn(PROMPT_ROWS + 5, 16), torch.randn(10, 16)
    alone = torch.cat([layer(row[None]) for row in tree])
    with torch.inference_mode():
        whole = torch.nn.functional.linear(prompt, layer.weight, layer.bias) + 1e-3  # one call's bits
        assert torch.equal(layer(prompt), whole)  # a prompt-only pass: one call
        with tree_rows_apart(len(tree)):
            both = layer(torch.cat([prompt, tree]))
        assert torch.equal(both[: len(prompt)], whole) and torch.equal(both[len(prompt) :], alone)
        short = prompt[:100]  # a short prompt is computed as decoding computes it, with or without a tree
        with tree_rows_apart(len(tree)):
            assert torch.equal(layer(torch.cat([short, tree])), torch.cat([layer(short), alone]))
        assert torch.equal(layer(short), torch.cat([layer(row[None]) for row in short]))
