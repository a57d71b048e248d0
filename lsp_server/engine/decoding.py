"""Greedy decoding, one step at a time, with KV reuse, cancellation and stop rules.

The loop runs the base model and the LM head separately: the prompt's hidden states
never go through the (vocabulary-sized) head, only the last position does, and the
final-norm hidden states the stop rules need come out of the same pass.  Greedy argmax
is unaffected by the monotonic logit post-processing some models apply (soft-capping,
scaling), so applying the head directly is exact for greedy decoding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from .kv_reuse import PrefixKVCache
from .stopping import StopRule


@dataclass
class DecodeOutput:
    token_ids: list[int]
    text: str
    stop_reason: str
    forward_passes: int
    prompt_tokens: int
    reused_prompt_tokens: int
    time_to_first_token: float
    seconds: float


class GreedyDecoder:
    """Plain greedy decoding on a warm model; the reference that speculation must match."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        stop_ids: frozenset[int],
        reuse_kv: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.reuse_kv = reuse_kv
        self.kv = PrefixKVCache()
        self._body = model.get_decoder()
        self._head = model.get_output_embeddings()
        self._device = model.device

    @torch.inference_mode()
    def hidden_states(self, ids: Sequence[int], cache: DynamicCache) -> torch.Tensor:
        """Final-norm hidden states of ``ids`` appended to ``cache`` (which grows)."""
        input_ids = torch.tensor([list(ids)], device=self._device)
        out = self._body(input_ids=input_ids, past_key_values=cache, use_cache=True)
        return out.last_hidden_state[0]

    @torch.inference_mode()
    def next_token(self, hidden: torch.Tensor) -> int:
        return int(self._head(hidden).argmax(-1))

    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        stop_rule: StopRule | None = None,
        cancel: threading.Event | None = None,
    ) -> DecodeOutput:
        """Decode greedily after ``prompt`` until a stop token, a stop rule or the budget."""
        started = time.perf_counter()
        cache, reused = self.kv.take(prompt) if self.reuse_kv else (DynamicCache(), 0)
        fed: list[int] = list(prompt[:reused])
        feed: list[int] = list(prompt[reused:])
        generated: list[int] = []
        text = ""
        keep_chars: int | None = None
        reason = "length"
        passes = 0
        first_token_at = 0.0
        while len(generated) < max_new_tokens:
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            hidden = self.hidden_states(feed, cache)[-1]
            fed.extend(feed)
            passes += 1
            token = self.next_token(hidden)
            if passes == 1:
                first_token_at = time.perf_counter() - started
            if token in self.stop_ids:
                reason = "end-of-text"
                break
            generated.append(token)
            text = self.tokenizer.decode(generated)
            if stop_rule is not None:
                decision = stop_rule.step(text, [token], hidden[None])
                if decision is not None:
                    keep_chars, reason = decision.keep_chars, decision.reason
                    break
            feed = [token]
        if self.reuse_kv:  # the cache holds exactly ``fed``: passes only end between steps
            self.kv.keep(fed, cache)
        return DecodeOutput(
            token_ids=generated,
            text=text if keep_chars is None else text[:keep_chars],
            stop_reason=reason,
            forward_passes=passes,
            prompt_tokens=len(prompt),
            reused_prompt_tokens=reused,
            time_to_first_token=first_token_at,
            seconds=time.perf_counter() - started,
        )
