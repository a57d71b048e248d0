"""Greedy decoding of many prompts at once, for building training data in bulk.

A decoding step on a CPU is bound by reading the weights, which it does once whatever
the number of rows: on the default model in bf16 here a step for 16 sequences took 66 ms,
about what one sequence's step takes (64 HumanEval prompts with 64 new tokens: 0.28 s a
prompt on the AMX Xeon, 0.45 s at 16 side by side).  The model's own generations are what the draft
head and GenGuard learn best from and the scarcest data (one sequence at a time, with
speculation, ~25 tokens/s here), so ``build-data`` decodes them in batches.

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


def _prefill(body: torch.nn.Module, prompts: Sequence[Sequence[int]], device: torch.device
             ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """Each prompt's cache, computed alone, left-padded into one batch cache; its attention
    mask; and the state after each prompt's last token.

    Alone, a prompt runs on the engine's kernels with no padding.  As one padded batch, the
    prefill of 16 HumanEval prompts took 12.9 s here, and a 128-token run of them 24.9 s
    against 18.1 s this way (prefill is bound by arithmetic, so batching it saves nothing).
    """
    caches, last = [], []
    for prompt in prompts:
        cache = new_cache()
        out = forward_with_cache(body, cache, input_ids=torch.tensor([list(prompt)], device=device))
        caches.append(cache)
        last.append(out.last_hidden_state[0, -1])
    width = max(len(prompt) for prompt in prompts)
    merged = new_cache()
    for index, layer in enumerate(caches[0].layers):
        keys = layer.keys.new_zeros(len(prompts), layer.keys.shape[1], width, layer.keys.shape[3])
        values = layer.values.new_zeros(len(prompts), layer.values.shape[1], width, layer.values.shape[3])
        for row, (prompt, cache) in enumerate(zip(prompts, caches)):
            keys[row, :, width - len(prompt):] = cache.layers[index].keys[0]
            values[row, :, width - len(prompt):] = cache.layers[index].values[0]
        merged.update(keys, values, index)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
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
