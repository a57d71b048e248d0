"""Greedy decoding of many prompts at once, for building training data in bulk.

A decoding step on a CPU is bound by reading the weights, which it does once whatever
the number of rows: on the default model in bf16 here a step for 16 sequences took 66 ms,
about what one sequence's step takes (64 HumanEval prompts with 64 new tokens: 0.28 s a
prompt on the AMX Xeon, 0.45 s at 16 side by side).  The model's own generations are what
the draft head and GenGuard learn best from and the scarcest data (one sequence at a time,
with speculation, ~25 tokens/s here), so ``build-data`` decodes them in batches.

Batches are left-padded and run on transformers' stock attention (the engine's bit-exact
kernels are for one sequence), and products are not split for row invariance
(``linear.rows_unlimited``), so an output can differ from what the editor's decoder
would give at a bf16 logit near-tie.  For training data that does not matter: each row's
tokens are still the argmax of the states stored with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from .greedy import greedy_tokens
from .kv_cache import forward_with_cache, new_cache
from .linear import rows_unlimited


@dataclass
class BatchOutput:
    token_ids: list[int]
    """The greedy continuation, without the stop token that ended it."""
    states: torch.Tensor
    """[len(token_ids), hidden] final-norm states: row j is the state that chose ``token_ids[j]``."""
    stop_reason: str
    """``end-of-text`` (a stop token came) or ``length`` (the budget ran out)."""


PACK_TOKENS = 512
"""Prompts are prefilled several to a pass, up to this many tokens, each attending to itself
only.  Alone, a short prompt's products are too small to run a CPU's matrix units at speed:
the 64 HumanEval prompts of 100 tokens on average took 7.0 s one by one, 5.2 s in passes of
up to 512 tokens and 5.8 s of up to 1,024 (the attention over the whole pass grows with its
square), on the AMX Xeon, December 4.  The same 150 s of a build's generations stored 36,833
positions packed against 29,818 one by one (peak memory 4.7 -> 5.6 GB); 337 of the 469
functions both did came out the same, the others parting at bf16 near-ties (median: at the
16th token), as batched decoding's do from one sequence's."""


def _packs(prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    """The prompts' indices in order, grouped into passes of at most ``PACK_TOKENS`` tokens (a
    longer prompt is a pass of its own)."""
    packs: list[list[int]] = []
    size = PACK_TOKENS
    for index, prompt in enumerate(prompts):
        if size + len(prompt) > PACK_TOKENS:
            packs.append([])
            size = 0
        packs[-1].append(index)
        size += len(prompt)
    return packs


def _packed_pass(body: torch.nn.Module, prompts: Sequence[Sequence[int]], device: torch.device
                 ) -> tuple[DynamicCache, torch.Tensor]:
    """One pass over ``prompts`` laid end to end, each at positions from 0 and seeing only its
    own earlier tokens: its cache and final states."""
    lengths = [len(prompt) for prompt in prompts]
    ids = [token for prompt in prompts for token in prompt]
    inputs: dict[str, torch.Tensor] = {"input_ids": torch.tensor([ids], device=device)}
    if len(prompts) > 1:
        total, dtype = sum(lengths), next(body.parameters()).dtype
        allowed = torch.block_diag(*(torch.ones(n, n, dtype=torch.bool).tril() for n in lengths))
        mask = torch.zeros(total, total, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        inputs["attention_mask"] = mask[None, None].to(device)
        inputs["position_ids"] = torch.tensor([[i for n in lengths for i in range(n)]], device=device)
    cache = new_cache()
    return cache, forward_with_cache(body, cache, **inputs).last_hidden_state[0]


def _prefill(body: torch.nn.Module, prompts: Sequence[Sequence[int]], device: torch.device
             ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """Each prompt's cache, left-padded into one batch cache; its attention mask; and the
    state after each prompt's last token.

    The prompts are computed packed (``PACK_TOKENS``), not as one padded batch: padding would
    compute the longest prompt's length for every row (as one padded batch, the prefill of 16
    HumanEval prompts took 12.9 s here, in the engine's 32-row calls).
    """
    width = max(len(prompt) for prompt in prompts)
    merged: DynamicCache | None = None
    last: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
    for pack in _packs(prompts):
        cache, states = _packed_pass(body, [prompts[index] for index in pack], device)
        if merged is None:
            merged = new_cache()
            for layer_index, layer in enumerate(cache.layers):
                shape = (len(prompts), layer.keys.shape[1], width, layer.keys.shape[3])
                merged.update(layer.keys.new_zeros(shape), layer.values.new_zeros(shape), layer_index)
        start = 0
        for index in pack:
            length = len(prompts[index])
            for ours, theirs in zip(merged.layers, cache.layers):
                ours.keys[index, :, width - length :] = theirs.keys[0, :, start : start + length]
                ours.values[index, :, width - length :] = theirs.values[0, :, start : start + length]
            start += length
            last[index] = states[start - 1]
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    assert merged is not None  # prompts is not empty
    return merged, mask, torch.stack(last)


@torch.inference_mode()
@rows_unlimited()
def greedy_batch(model: PreTrainedModel, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 stop_ids: frozenset[int]) -> list[BatchOutput]:
    """Greedy continuations of ``prompts``, decoded side by side; rows leave the batch as they finish."""
    if not prompts or any(not prompt for prompt in prompts) or max_new_tokens < 1:
        raise ValueError("greedy_batch needs at least one prompt, no empty prompt and a budget of one token or more")
    device = model.device
    body, lm_head = model.get_decoder(), model.get_output_embeddings()
    cache, mask, hidden = _prefill(body, prompts, device)
    tokens: list[list[int]] = [[] for _ in prompts]
    states: list[list[torch.Tensor]] = [[] for _ in prompts]
    reasons = ["length"] * len(prompts)
    rows = list(range(len(prompts)))  # batch row -> prompt index, for the rows still decoding
    while True:
        picks = greedy_tokens(lm_head(hidden)).tolist()
        keep = []
        for row, (index, token) in enumerate(zip(rows, picks)):
            if token in stop_ids:
                reasons[index] = "end-of-text"
                continue
            tokens[index].append(token)
            states[index].append(hidden[row])
            if len(tokens[index]) < max_new_tokens:
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(rows):
            selected = torch.tensor(keep, device=device, dtype=torch.long)
            cache.batch_select_indices(selected)
            mask = mask[selected]
            picks = [picks[row] for row in keep]
            rows = [rows[row] for row in keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=-1)
        hidden = forward_with_cache(body, cache, input_ids=torch.tensor(picks, device=device).reshape(-1, 1),
                                    attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1
                                    ).last_hidden_state[:, -1]
    empty = torch.empty(0, model.config.hidden_size, dtype=model.dtype, device=device)
    return [BatchOutput(ids, torch.stack(rows_) if rows_ else empty, reason)
            for ids, rows_, reason in zip(tokens, states, reasons)]
