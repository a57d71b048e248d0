"""Attention for decoding passes on a CPU whose result for a token is bit-for-bit the
same whether the token is decoded alone or inside a verification tree.

Speculation is lossless only if the verifier computes, for every tree node, exactly
what plain decoding computes for that token.  In fp32 the remaining rounding noise of
different kernels almost never flips a greedy choice; in bf16 it does (measured on
HumanEval with PyTorch's SDPA: 17 of 164 completions differed, every one at a logit
near-tie).  The culprit is that SDPA's arithmetic for a query row depends on the rest of
the pass: the total key length, where a node's ancestors sit among masked siblings, how
many query rows share a block.

Here every query token's attention is defined on its own key sequence, the keys it may
see in position order (the cache, then its ancestors, then itself), split at a fixed
place: a token at position p sees a cache part [0, BLOCK * (p // BLOCK)) and a tail of
the at most ``BLOCK`` keys after it.  Each half is one call of PyTorch's CPU flash
attention, which returns the log-sum-exp too, and the halves are merged by their
softmax mass.  The cache part is shared by all tokens of a pass (one call, the tokens as
extra query rows); the tail is padded to ``BLOCK`` slots, masked, in position order: a
tree token gets its own (its ancestors lie among other nodes: ``_OwnTails``, which copies
only the visible slots: a 25-node tree 30-55 us a layer less than a full gather), the
tokens of a prompt block share their block's keys.  Every call so has the same key length
and layout for a token whatever else is in the pass, query rows are computed alike
however many there are (checked, with padding where the kernel differs:
``ROW_MULTIPLE``), and the merge is plain arithmetic after one exp on whole vector rows.  So a token gets the same bits
in a 1-token pass, in any tree and in any chunk of a prompt.  A tree reaching past the
pass's block boundary gives its deepest tokens their own cache part (computed on their
gathered key sequence: rare, and a copy of the cache).  A request's first pass carries a
tree after its prompt: the prompt's tokens go in causal blocks, the tree's as in any tree.
``tests/test_attention.py`` checks all of this bit for bit on random trees and prompts;
the real model, bf16, gives every hidden state of the tree passes of a repository
benchmark bit for bit.

One exception, for speed: where the layer's projections compute a long prompt in one call
whose bits differ from a chunk's anyway (``linear``: a row limit per call, as on AMX), a
fresh prompt (no cache before it) of more than ``linear.PROMPT_ROWS`` tokens takes stock
causal SDPA in one call over its own keys, as plain decoding's prefill and speculation's
first pass both do, so they still agree; the tree after it keeps its decoding bits.  A
1,024-token prefill of the default model took 0.58 instead of 0.67 s here (2,048: 1.52
against 1.70 s).  Reuse of a cache then differs from a fresh prompt in low bits, as it
already did through the projections.

Layout: the query heads that share a key/value head are laid out as extra query rows
of that head (grouped-query attention without repeating keys and values), which is what
made decoding passes fast on this CPU in the first place (0.08 ms per layer instead of
1.15 ms for transformers' SDPA with ``enable_gqa`` at a 2k-token cache).  Cost against
that grouped SDPA (whole default-model pass, bf16): 2-9% for one token, up to 13% for
a 16-node tree; a 1,850-token prompt takes the same time.  Batches of several sequences,
and masks that hide cache positions (padding), keep the stock SDPA path.

Installed for every model loaded on a CPU (with ``linear.install_row_invariant``), so
plain greedy decoding, prompt lookup and speculation run on the same kernels and
benchmark ratios compare decoding strategies, not kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from .linear import PROMPT_ROWS, tree_rows

NAME = "swiftguard_row_invariant"
MAX_TREE = 256
"""Passes with a non-causal mask of more tokens than this (after any prompt chunk in front,
``PROMPT_SPLIT``) are not verification trees (the largest is 64 nodes plus the pending
token): stock path."""
BLOCK = 128
"""A token at position p sees a cache part [0, BLOCK * (p // BLOCK)) and a tail of at most BLOCK keys."""

PROMPT_SPLIT = 16
"""A pass whose first tokens are a causal chunk longer than this (a prompt with a tree after
it) computes the chunk in causal blocks and the rest as a tree.  Every token gets the same
bits either way, so this is about speed only: a decoding tree (one pending token) keeps its
single shared cache part, and a long prompt is not gathered token by token."""

ROW_MULTIPLE = 8
"""The flash kernel gives a query row other bits when it is computed among very few rows
(measured: 3 rows, and 1 or 2 rows at a 2k-token cache): every call gets a multiple of
this many rows per key/value head, zero rows added."""


def _flash(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
           scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's CPU flash attention, with output and log-sum-exp: query [batch, heads, rows, dim],
    ``mask`` broadcast over heads (and rows, if it has one)."""
    rows = query.shape[2]
    if rows % ROW_MULTIPLE:
        extra = ROW_MULTIPLE - rows % ROW_MULTIPLE
        query = torch.cat([query, query.new_zeros(*query.shape[:2], extra, query.shape[3])], 2)
        if mask is not None and mask.shape[2] == rows:
            mask = torch.cat([mask, mask.new_zeros(*mask.shape[:2], extra, mask.shape[3])], 2)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, False,
                                                                          attn_mask=mask, scale=scale)
    return out[:, :, :rows], lse[:, :, :rows]


@dataclass
class _OwnTails:
    """Each token's own tail (a tree's tokens: their ancestors lie among other nodes), laid out
    [tokens, kv_heads, BLOCK, dim] for the flash kernel, slot s of token t holding the s-th
    key the token sees from the part's ``start`` on.  Only visible slots are written: a
    masked slot gives the same bits whatever finite key it holds, so the buffers are zeroed
    once for the pass and each layer copies the keys every token sees (the cache since the
    block boundary, and any chain above the tree) in one broadcast, then the rest (a
    token's ancestors) one by one."""

    tokens: int
    common: int
    """Leading slots that every token sees: keys [start, start + common)."""
    token: torch.Tensor
    slot: torch.Tensor
    key: torch.Tensor
    """The other visible slots: (token, slot) holds key ``key`` (an index into the part's keys)."""
    buffers: tuple[torch.Tensor, torch.Tensor] | None = None
    """Keys and values, made at the pass's first layer and refilled at each."""

    def fill(self, key: torch.Tensor, value: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The tails of key/value [kv_heads, keys, dim], for one layer."""
        kv_heads, _, dim = key.shape
        shape = (self.tokens, kv_heads, BLOCK, dim)
        if self.buffers is None or self.buffers[0].shape != shape or self.buffers[0].dtype != key.dtype:
            self.buffers = (key.new_zeros(shape), key.new_zeros(shape))
        for buffer, source in zip(self.buffers, (key, value)):
            buffer[:, :, : self.common] = source[:, start : start + self.common]
            buffer[self.token, :, self.slot] = source[:, self.key].transpose(0, 1)
        return self.buffers


@dataclass
class _Part:
    """Tokens of a pass that share one cache part, and where their tails come from."""

    tokens: torch.Tensor | None
    """Which query tokens (None: all of them, in order)."""
    key_index: torch.Tensor | None
    """Key positions the tokens see (None: all); the tail and cache part index into these."""
    start: int
    """Length of the cache part: a multiple of ``BLOCK``."""
    tail: _OwnTails | None
    """Each token's own tail; None: the tokens are consecutive positions of one block and share
    the tail keys [start, start + BLOCK), each seeing those up to itself."""
    tail_mask: torch.Tensor
    """Additive mask, -inf on slots a token does not see: [tokens, 1, 1, BLOCK] for own
    tails, [1, 1, groups * tokens, BLOCK] (row g * tokens + t) for a shared tail."""


def _own_tails(allowed: torch.Tensor, start: int, dtype: torch.dtype, tokens: torch.Tensor | None = None,
               key_index: torch.Tensor | None = None) -> _Part:
    """Tails of the tokens whose ``allowed`` rows [tokens, keys] see all keys before ``start``.

    Physical order is position order (the cache precedes the pass, ancestors precede
    descendants), so a token's visible keys from ``start`` on, in index order, are its tail.
    """
    tail = allowed[:, start:]
    rows, cols = tail.nonzero(as_tuple=True)
    slot = tail.cumsum(1)[rows, cols] - 1
    common = int(tail.all(0).int().cumprod(0).sum())
    rest = slot >= common
    used = torch.arange(BLOCK, device=allowed.device) < tail.sum(1, keepdim=True)
    mask = torch.zeros(used.shape, dtype=dtype, device=allowed.device).masked_fill_(~used, float("-inf"))
    own = _OwnTails(tail.shape[0], common, rows[rest], slot[rest], cols[rest] + start)
    return _Part(tokens, key_index, start, own, mask[:, None, None, :])


def _causal_blocks(past: int, tokens: int, groups: int, dtype: torch.dtype, device: torch.device) -> list[_Part]:
    """A causal chunk (a prompt, new prompt tokens after a reused cache, plain decoding)
    cut at the block boundaries of its positions: the tokens of one block share their
    cache part and their tail keys."""
    parts = []
    first = 0
    while first < tokens:
        start = BLOCK * ((past + first) // BLOCK)
        last = min(tokens, start + BLOCK - past)
        seen = torch.arange(past + first, past + last, device=device) - start  # last tail slot each token sees
        hidden = torch.arange(BLOCK, device=device) > seen[:, None]
        mask = torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill_(hidden, float("-inf"))
        which = None if (first, last) == (0, tokens) else torch.arange(first, last, device=device)
        parts.append(_Part(which, None, start, None, mask.repeat(groups, 1)[None, None]))
        first = last
    return parts


@dataclass
class _WholePrompt:
    """The first ``rows`` tokens of a pass are a fresh prompt (no cache before it) longer than
    ``PROMPT_ROWS``: computed by the stock causal SDPA kernel in one call over its own keys."""

    rows: int


def _tree_plan(allowed: torch.Tensor, dtype: torch.dtype) -> list[_Part]:
    """A verification tree's tokens each gather their own tail (their ancestors are spread
    among other nodes).  A tree that reaches past the pass's block boundary would have tree
    nodes in the cache part of its deep tokens: each of those gets its own part over its own
    key sequence, exactly as a 1-token pass would compute it (rare, and it copies the cache)."""
    tokens, length = allowed.shape
    start = BLOCK * ((length - tokens) // BLOCK)
    crossing = allowed.sum(1) > start + BLOCK  # position + 1 > start + BLOCK
    if not bool(crossing.any()):
        return [_own_tails(allowed, start, dtype)]
    inside = (~crossing).nonzero().flatten()
    parts = [_own_tails(allowed[inside], start, dtype, inside)] if len(inside) else []
    for token in crossing.nonzero().flatten():
        keys = allowed[token].nonzero().flatten()
        alone = torch.ones(1, len(keys), dtype=torch.bool, device=allowed.device)
        parts.append(_own_tails(alone, BLOCK * ((len(keys) - 1) // BLOCK), dtype, token[None], keys))
    return parts


def _tail(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, part: _Part,
          scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the tail alone: output [tokens, kv_heads, groups, dim] and log-sum-exp
    [tokens, kv_heads, groups]."""
    kv_heads, groups, tokens, dim = query.shape
    if part.tail is not None:
        keys, values = part.tail.fill(key, value, part.start)
        return _flash(query.permute(2, 0, 1, 3), keys, values, part.tail_mask, scale)
    keys, values = key[None, :, part.start : part.start + BLOCK], value[None, :, part.start : part.start + BLOCK]
    if keys.shape[2] < BLOCK:  # the pass ends inside the block: pad (masked)
        padding = keys.new_zeros(1, kv_heads, BLOCK - keys.shape[2], dim)
        keys, values = torch.cat([keys, padding], 2), torch.cat([values, padding], 2)
    out, lse = _flash(query.reshape(1, kv_heads, groups * tokens, dim), keys, values, part.tail_mask, scale)
    return (out.reshape(kv_heads, groups, tokens, dim).permute(2, 0, 1, 3),
            lse.reshape(kv_heads, groups, tokens).permute(2, 0, 1))


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, part: _Part,
            scale: float) -> torch.Tensor:
    """query [kv_heads, groups, tokens, dim], key/value [kv_heads, keys, dim] of one part.
    Returns [tokens, kv_heads, groups, dim]."""
    kv_heads, groups, tokens, dim = query.shape
    out, lse = _tail(query, key, value, part, scale)
    if not part.start:
        return out
    cached, cached_lse = _flash(query.reshape(1, kv_heads, groups * tokens, dim), key[None, :, : part.start],
                                value[None, :, : part.start], None, scale)
    cached = cached.reshape(kv_heads, groups, tokens, dim).permute(2, 0, 1, 3).float()
    # The cache part's share of the softmax mass, sigmoid(lse_cache - lse_tail).  Elementwise
    # kernels compute what is left past the last full pair of vectors, and the ends of
    # thread chunks, with scalar code whose exp may round differently, and which elements
    # those are depends on the tensor's size.  So the exp runs on whole 32-float rows, one
    # per (token, head) (two thread chunks of whole rows for up to 128 tokens of 16 heads),
    # and only plain arithmetic follows it.
    difference = (lse - cached_lse.reshape(kv_heads, groups, tokens).permute(2, 0, 1))[..., None]
    share = torch.exp(difference.expand(tokens, kv_heads, groups, 32).contiguous()).add_(1.0).reciprocal_()
    return out.float().add_(cached.sub_(out.float()).mul_(share[..., :1])).to(query.dtype)


def _shared_prefix(own: torch.Tensor) -> int:
    """How many leading tokens of a pass form a causal run that every later token sees:
    the prompt chunk in front of a verification tree (and any single-child chain at the
    tree's top).  ``own`` [tokens, tokens]: which of the pass's tokens each one sees, none
    of them a later one (so counting is enough)."""
    index = torch.arange(own.shape[0], device=own.device)
    causal_row = own.sum(1) == index + 1  # sees every earlier token of the pass
    seen_by_all_later = own.sum(0) == own.shape[0] - index  # ... and is seen by every later one
    return int((causal_row & seen_by_all_later).int().cumprod(0).sum())


def _prompt_and_tree(allowed: torch.Tensor, past: int, shared: int, groups: int, dtype: torch.dtype) -> list[_Part]:
    """A prompt chunk followed by a tree (the first pass of a request, drafting already):
    the chunk in causal blocks, the rest as a tree whose tokens all see the chunk."""
    return (_placed(_causal_blocks(past, shared, groups, dtype, allowed.device), 0, shared)
            + _placed(_tree_plan(allowed[shared:], dtype), shared, allowed.shape[0] - shared))


def _placed(parts: list[_Part], first: int, count: int) -> list[_Part]:
    """Parts planned for ``count`` tokens on their own, moved to tokens ``first`` on of a larger pass."""
    for part in parts:
        part.tokens = (torch.arange(first, first + count, device=part.tail_mask.device) if part.tokens is None
                       else part.tokens + first)
    return parts


_Plan = list[_Part | _WholePrompt]
_last_plan: tuple[Any, tuple[int, int, int, bool, torch.dtype, torch.device], _Plan] | None = None
"""The plan of the latest pass, keyed by its mask (held, so its identity is not reused), shape,
tree rows, whether whole prompts are allowed, and dtype."""


def _plan_for(attention_mask: torch.Tensor | None, tokens: int, length: int, groups: int, dtype: torch.dtype,
              device: torch.device, whole_prompts: bool = False) -> _Plan | None:
    """How the tokens of a pass are computed, worked out at its first layer and reused by
    the others; None when this is not a pass over one sequence (a mask that hides cache
    positions or everything from a token) or a non-causal pass too large to be a tree.
    ``whole_prompts``: a fresh prompt may take the stock kernel (``_WholePrompt``)."""
    global _last_plan
    cached, shape = _last_plan, (tokens, length, tree_rows(), whole_prompts, dtype, device)
    if cached is not None and cached[0] is attention_mask and cached[1] == shape:
        return cached[2]
    past = length - tokens
    prompt = tokens - tree_rows() if whole_prompts and not past else 0
    plan: _Plan
    if attention_mask is None:
        plan = [_WholePrompt(tokens)] if prompt > PROMPT_ROWS else _causal_blocks(past, tokens, groups, dtype, device)
    else:
        allowed = attention_mask[0, 0] if attention_mask.dtype == torch.bool else attention_mask[0, 0] == 0
        if allowed.shape != (tokens, length) or not bool(allowed[:, :past].all()) or not bool(allowed.any(1).all()):
            return None
        own = allowed[:, past:]
        if bool(own.triu(1).any()):  # a token that sees later ones: not a decoding pass
            return None
        shared = _shared_prefix(own)
        if PROMPT_ROWS < prompt <= shared:  # a fresh prompt, then maybe a tree
            plan = [_WholePrompt(prompt)]
            if prompt < tokens:
                plan += _placed(_tree_plan(allowed[prompt:], dtype), prompt, tokens - prompt)
        elif shared == tokens:
            plan = _causal_blocks(past, tokens, groups, dtype, device)
        elif shared > PROMPT_SPLIT and tokens - shared <= MAX_TREE:
            plan = _prompt_and_tree(allowed, past, shared, groups, dtype)
        elif tokens <= MAX_TREE:
            plan = _tree_plan(allowed, dtype)
        else:
            return None
    _last_plan = (attention_mask, shape, plan)
    return plan


def decoding_attention(
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
    batch, heads, tokens, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    plan = None
    causal = attention_mask is None and (tokens == 1 or getattr(module, "is_causal", True))
    if (causal or (attention_mask is not None and attention_mask.shape[:2] == (1, 1))) and batch == 1 \
            and heads % kv_heads == 0 and not dropout and not kwargs.get("softcap") \
            and not kwargs.get("sliding_window"):
        fresh_prompt = length == tokens > PROMPT_ROWS  # checked first: decoding passes skip the module walk
        plan = _plan_for(attention_mask, tokens, length, heads // kv_heads, query.dtype, query.device,
                         fresh_prompt and _prompts_take_one_call(module))
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = scaling if scaling is not None else dim**-0.5
    grouped = query[0].reshape(kv_heads, heads // kv_heads, tokens, dim)
    first = plan[0]
    if isinstance(first, _WholePrompt) and first.rows == tokens:
        return _whole_prompt(module, query, key, value, first.rows, scale), None
    if len(plan) == 1 and isinstance(first, _Part) and first.tokens is None:
        out = _attend(grouped, key[0], value[0], first, scale)
    else:
        out = query.new_empty(tokens, kv_heads, heads // kv_heads, dim)
        for part in plan:
            if isinstance(part, _WholePrompt):
                out[: part.rows] = _whole_prompt(module, query, key, value, part.rows, scale)[0].reshape(
                    part.rows, kv_heads, heads // kv_heads, dim)
                continue
            keys, values = key[0], value[0]
            if part.key_index is not None:
                keys, values = keys.index_select(1, part.key_index), values.index_select(1, part.key_index)
            out[part.tokens] = _attend(grouped[:, :, part.tokens], keys, values, part, scale)
    return out.reshape(1, tokens, heads, dim), None


def _prompts_take_one_call(module: torch.nn.Module) -> bool:
    """Whether the layer's own projections compute a long prompt in one call whose bits
    differ from a chunk's (``linear``: a row limit per call, which prompts skip for speed).
    Then a fresh prompt and a reused cache already disagree in low bits, and the prompt's
    attention may as well take the faster stock kernel; elsewhere it keeps the exactness."""
    children = module.children() if isinstance(module, torch.nn.Module) else ()
    return any(getattr(child, "max_rows", None) for child in children)


def _whole_prompt(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: int,
                  scale: float) -> torch.Tensor:
    """The first ``rows`` tokens, a fresh prompt, by stock causal SDPA over their own keys:
    [1, rows, heads, dim].  The keys are copied out of a longer pass (a tree after the
    prompt), so that the kernel sees the same tensors as in a prompt-only pass."""
    keys, values = key[:, :, :rows].contiguous(), value[:, :, :rows].contiguous()
    out, _ = sdpa_attention_forward(module, query[:, :, :rows], keys, values, None, scaling=scale, is_causal=True)
    return out


def register() -> str:
    """Make the attention available to ``from_pretrained(attn_implementation=...)``."""
    AttentionInterface.register(NAME, decoding_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
