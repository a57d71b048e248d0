"""Greedy decoding with optional tree speculation, KV reuse, cancellation and stop rules.

Every pass is a tree verification (see ``speculation.verify``); plain greedy decoding is
the special case of an empty tree, so speculation cannot drift from the reference: both
run the same loop.  The loop runs the base model and the LM head separately: the
prompt's hidden states never go through the vocabulary-sized head, and the final-norm
hidden states the stop rules need come out of the same pass.  Greedy argmax is not
changed by the monotonic logit post-processing some models apply (soft-capping,
scaling), so applying the head directly is exact for greedy decoding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from .kernel_facts import this_machine
from .kv_cache import forward_with_cache, new_cache
from .kv_reuse import PrefixKVCache
from .screened_argmax import screen_for
from .speculation.draft_tree import DraftTree
from .speculation.verify import TreeVerifier, Verified
from ..stop_rule import StopDecision, StopRule


class Drafter(Protocol):
    """Proposes a draft tree for the next pass and learns from what was accepted."""

    def begin(self, prompt: Sequence[int], language: str | None = None) -> None:
        """A new completion after ``prompt``, in a document of ``language`` (a grammar name)."""
        ...

    def draft(self, tokens: Sequence[int], cache: DynamicCache | None = None, pending: Sequence[int] = ()) -> DraftTree:
        """A tree rooted at ``tokens[-1]`` (the prompt plus everything generated so far);
        ``cache`` holds all of ``tokens`` but ``pending``, for drafters that run the model
        (they must leave it as they found it)."""
        ...

    def observe(self, tokens: Sequence[int], tree: DraftTree, verified: Verified, seconds: float) -> None:
        """Feedback after every pass (``tokens[-1]`` was its root): what matched, how long it took."""
        ...

    def finish(self, prompt: Sequence[int], generated: Sequence[int]) -> None:
        """The completion is over: a chance to remember it."""
        ...


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
    accepted_per_pass: list[int] = field(default_factory=list)
    """Tokens each pass produced (1 = no draft token accepted)."""


def _final_norm_weight(body: torch.nn.Module) -> torch.Tensor | None:
    """The scale of the norm before the LM head, where the body has one (``norm``, as in Llama,
    Qwen and most decoders): how large each channel of the head's input tends to be."""
    weight = getattr(getattr(body, "norm", None), "weight", None)
    return weight.detach() if isinstance(weight, torch.Tensor) and weight.dim() == 1 else None


class Decoder:
    """Greedy decoding on a warm model; speculative when given a drafter."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        stop_ids: frozenset[int],
        reuse_kv: bool = True,
        screen_head: bool = True,
    ) -> None:
        """``screen_head``: pick greedy tokens with the LM head's int8 screen where it pays
        (``screened_argmax``; on a CPU), instead of reading the whole head every pass."""
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.reuse_kv = reuse_kv
        self.kv = PrefixKVCache()
        body, head = model.get_decoder(), model.get_output_embeddings()
        screen = screen_for(head, model.config.hidden_size, this_machine(), _final_norm_weight(body),
                            model.get_input_embeddings().weight) if screen_head else None
        self.verify = TreeVerifier(body, head, model.device, model.dtype, screen)

    @torch.inference_mode()
    def hidden_states(self, ids: Sequence[int], cache: DynamicCache) -> torch.Tensor:
        """Final-norm hidden states of ``ids`` appended to ``cache`` (which grows)."""
        input_ids = torch.tensor([list(ids)], device=self.model.device)
        return forward_with_cache(self.verify.body, cache, input_ids=input_ids).last_hidden_state[0]

    def _judge(self, rule: StopRule, generated: list[int], accepted: list[int],
               hidden: torch.Tensor) -> tuple[list[int], str, StopDecision | None]:
        """Append ``accepted`` to ``generated`` one token at a time, asking the rule after
        each: a stop then ends the completion at the same token as plain decoding would,
        not at the end of a speculative pass.  Returns the tokens kept, the text so far
        and the decision."""
        text = ""
        for j, token in enumerate(accepted):
            generated.append(token)
            text = self.tokenizer.decode(generated)
            decision = rule.step(text, [token], hidden[j : j + 1])
            if decision is not None:
                return accepted[: j + 1], text, decision
        return accepted, text, None

    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        stop_rule: StopRule | None = None,
        cancel: threading.Event | None = None,
        drafter: Drafter | None = None,
        language: str | None = None,
    ) -> DecodeOutput:
        """Decode greedily after ``prompt`` until a stop token, a stop rule or the budget;
        ``language`` (the document's) lets the drafter pick its sources."""
        started = time.perf_counter()
        cache, reused = self.kv.take(prompt) if self.reuse_kv else (new_cache(), 0)
        fed: list[int] = list(prompt[:reused])  # exactly the tokens whose keys/values are in ``cache``
        pending: list[int] = list(prompt[reused:])
        generated: list[int] = []
        per_pass: list[int] = []
        text = ""
        keep_chars: int | None = None
        reason = "length"
        first_token_at = 0.0
        if drafter is not None:
            drafter.begin(prompt, language)
        while len(generated) < max_new_tokens and reason == "length":
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            context = [*prompt, *generated] if drafter is not None else []  # once per pass, for both calls
            # The prompt's pass drafts too: its tree rides on the prefill (``attention.PROMPT_SPLIT``).
            tree = drafter.draft(context, cache, pending) if drafter is not None else DraftTree.empty()
            pass_started = time.perf_counter()
            verified = self.verify(cache, pending, tree)
            fed.extend(pending)
            fed.extend(tree.tokens[node] for node in verified.path)
            if drafter is not None:
                drafter.observe(context, tree, verified, time.perf_counter() - pass_started)
            if not per_pass:
                first_token_at = time.perf_counter() - started
            accepted = verified.accepted[: max_new_tokens - len(generated)]
            ends = [i for i, token in enumerate(accepted) if token in self.stop_ids]
            if ends:
                accepted, reason = accepted[: ends[0]], "end-of-text"
            if accepted and stop_rule is not None:
                accepted, text, decision = self._judge(stop_rule, generated, accepted, verified.hidden)
                if decision is not None:
                    keep_chars, reason = decision.keep_chars, decision.reason
            elif accepted:
                generated.extend(accepted)
                text = self.tokenizer.decode(generated)
            per_pass.append(len(accepted))
            pending = [verified.accepted[-1]] if len(accepted) == len(verified.accepted) else []
            if not pending:
                break  # stopped inside this pass's tokens: nothing more to feed
        if self.reuse_kv:  # the cache holds exactly ``fed``: passes only end between steps
            self.kv.keep(fed, cache)
        if drafter is not None and reason != "cancelled":
            drafter.finish(prompt, generated)
        return DecodeOutput(
            token_ids=generated,
            text=text if keep_chars is None else text[:keep_chars],
            stop_reason=reason,
            forward_passes=len(per_pass),
            prompt_tokens=len(prompt),
            reused_prompt_tokens=reused,
            time_to_first_token=first_token_at,
            seconds=time.perf_counter() - started,
            accepted_per_pass=per_pass,
        )
