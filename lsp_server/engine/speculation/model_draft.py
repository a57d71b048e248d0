"""Drafts from the model itself, run on half-precision copies of its weights.

On a CPU a decoding pass is bound by memory bandwidth: a float32 pass of the default model
reads its 2 GB of weights once per pass, about 230 ms on a 2-core AVX2 machine (10 GB/s).
The same layers with float16 weights (activations converted at each product, everything
else in float32) read half as much: on 24 HumanEval problems the copy drafted at 98 ms a
token where plain decoding took 204.  Its greedy token is the float32 model's almost always:
float16 keeps 11 bits of mantissa, so the two argmaxes differ only where the top logits
nearly tie (teacher-forced over 400 positions of a requests file, all 400 agreed).  So the
copy drafts a chain of the tokens plain decoding will produce, and the float32 model
verifies the chain in one pass as it verifies any tree: the output stays float32 greedy
output, token for token.

The copy shares everything but the linear weights with the model (embeddings, norms,
rotary tables) and works on the model's own KV cache: the positions before the draft hold
exact float32 keys and values, so the copy needs no prompt pass of its own; the positions
it adds while drafting are dropped before verification.

It drafts one token per pass: PyTorch's float16 product on such a CPU has no matrix-matrix
kernel and costs each row as much as a one-row product (4864x896: 0.5 ms for 1 row, 8.4 ms
for 18; float32 4.7 ms), so checking a retrieval draft in one pass of the copy would cost
as much as drafting it.  The drafter therefore weighs the copy's chain against the tree
the other sources offer, per pass (``SpeculativeDrafter.chain_limit``).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from transformers import DynamicCache

from ..kv_cache import forward_with_cache
from ..loader import LoadedModel
from .verify import keep_cache_positions

log = logging.getLogger(__name__)

NEAR_TIE = 0.003
"""A draft token whose top two logits lie closer than this share of the top logit ends the
chain: below it the float32 model may pick the other token, and every draft token after it
would be wasted.  Measured on 400 positions of a requests file: the copy's logits were
within 0.029 of the model's (0.004 median at the top token) where top logits were 12.8
and up (median 18.6), so the margin needed there is about 0.05; 3% of positions had less."""
MAX_PENDING = 8
"""The copy drafts only after passes that leave at most this many tokens to feed (a prompt
would make it repeat the prefill at half the cost, which never pays)."""


class Chain(NamedTuple):
    """The copy's greedy tokens; where the last one nearly tied, the token it tied with."""

    tokens: list[int]
    runner_up: int | None = None


class HalfLinear(torch.nn.Module):
    """A linear layer on a float16 copy of a weight; input and output keep their dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight16 = weight.detach().to(torch.float16)  # no copy when already float16
        self.bias = bias
        self.out_features = weight.shape[0]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = input.reshape(-1, input.shape[-1]).to(torch.float16)
        out = (rows @ self.weight16.T).to(input.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*input.shape[:-1], self.out_features)


def half_weight(module: torch.nn.Linear) -> torch.Tensor:
    """A float16 copy of a linear layer's weight: the one kept at load time where packing
    freed the weight (``engine.linear``), else made now."""
    kept = getattr(module, "weight16", None)
    if kept is not None:
        return kept
    if not module.weight.numel():
        raise ValueError("the weights were packed without float16 copies: load with draft_copy=True")
    return module.weight.detach().to(torch.float16)


def _with_half_linears(module: torch.nn.Module, config: Any) -> torch.nn.Module:
    """A shallow copy of ``module`` whose linear layers are float16 ``HalfLinear`` copies
    and whose submodules see ``config``; every parameter and buffer is the module's own."""
    clone = copy.copy(module)
    if hasattr(clone, "config"):
        clone.config = config
    clone._modules = {
        name: None if child is None
        else HalfLinear(half_weight(child), child.bias) if isinstance(child, torch.nn.Linear)
        else _with_half_linears(child, config)
        for name, child in module._modules.items()
    }
    return clone


def _plain_attention(config: Any) -> Any:
    """The model's config with PyTorch's own attention: a draft needs no bit-exact kernel
    (``engine.attention``), and SDPA is a few ms cheaper per one-token pass here (105 against
    112 ms for the copy's body, back to back)."""
    plain = copy.copy(config)
    plain._attn_implementation = "sdpa"
    return plain


def ascii_vocabulary(tokenizer: Any) -> list[int]:
    """The token ids whose text is ASCII, special tokens included.  Code is written in them
    (in the sources of requests, express and greenlet, 5 of 88,000 tokens were not), and
    for Qwen2.5 they are 94,651 of 151,936 ids: the copy's LM head then reads 38% less
    (14 instead of 25 ms a token here).  Decoding the vocabulary takes about 1.4 s."""
    texts = tokenizer.batch_decode([[token] for token in range(len(tokenizer))])
    return [token for token, text in enumerate(texts) if text.isascii()]


class HalfPrecisionDraft:
    """The loaded model's body and LM head with float16 weights: greedy chains of drafts."""

    name = "model"

    def __init__(self, body: torch.nn.Module, head: torch.nn.Linear, vocabulary: Sequence[int] | None = None) -> None:
        """``vocabulary``: the token ids the copy may draft (all when None); its LM head
        keeps only their rows."""
        started = time.perf_counter()
        self.body = _with_half_linears(body, _plain_attention(body.config))
        weight, bias = half_weight(head), head.bias
        self.device = head.weight.device
        self.vocabulary: torch.Tensor | None = None
        if vocabulary is not None:
            self.vocabulary = torch.tensor([token for token in vocabulary if token < weight.shape[0]], device=self.device)
            weight = weight.index_select(0, self.vocabulary)
            bias = None if bias is None else bias.index_select(0, self.vocabulary)
        self.head = HalfLinear(weight, bias)
        log.info("float16 draft copy of the model made in %.1fs", time.perf_counter() - started)

    @classmethod
    def worth_it(cls, loaded: LoadedModel) -> bool:
        """Only a float32 model halves its weights' bytes in float16 (a bf16/fp16 model would
        read as much per draft token as per verified pass), and its weights must be at hand."""
        return loaded.dtype == torch.float32 and loaded.half_copy

    @torch.inference_mode()
    def chain(self, cache: DynamicCache, pending: Sequence[int], limit: int) -> Chain:
        """Up to ``limit`` tokens the model is likely to produce after ``pending``, which
        follows the tokens in ``cache``, one pass each; it ends early at a near-tie, whose
        other token comes with it.  ``cache`` is left as it was found."""
        start = cache.get_seq_length()
        tokens: list[int] = []
        feed = list(pending)
        try:
            while len(tokens) < limit:
                token, runner_up = self._pick(self._logits(cache, feed))
                if token is None:
                    break
                if self.vocabulary is not None:
                    token = int(self.vocabulary[token])
                    runner_up = None if runner_up is None else int(self.vocabulary[runner_up])
                tokens.append(token)
                if runner_up is not None:
                    return Chain(tokens, runner_up)
                feed = [token]
            return Chain(tokens)
        finally:
            keep_cache_positions(cache, start, [])

    def _logits(self, cache: DynamicCache, ids: Sequence[int]) -> torch.Tensor:
        """Logits after the last of ``ids``, fed after ``cache`` (which grows)."""
        input_ids = torch.tensor([list(ids)], device=self.device)
        hidden = forward_with_cache(self.body, cache, input_ids=input_ids).last_hidden_state[0, -1]
        return self.head(hidden).float()

    @staticmethod
    def _pick(logits: torch.Tensor) -> tuple[int | None, int | None]:
        """The greedy token (None when float16 overflowed) and, where it nearly ties with
        the next best token, that token."""
        top = torch.topk(logits, 2)
        if not bool(torch.isfinite(top.values).all()):
            return None, None
        first, second = float(top.values[0]), float(top.values[1])
        return int(top.indices[0]), int(top.indices[1]) if first - second < NEAR_TIE * abs(first) else None
