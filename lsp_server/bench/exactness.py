"""``swiftguard bench --check-exact``: is speculation bit-exact on this machine?

Speculation is lossless because every tree node gets exactly the hidden state that plain
decoding gives its token (``engine.attention``, ``engine.linear``).  That rests on the
CPU kernels computing a row alike however many rows share a call, which the test suite
checks on a tiny model; other CPUs, thread counts or library builds could differ.  This
check answers the question on the real model and real drafts: after every pass that
verified a tree, the pending token and the accepted path are decoded again one token
at a time, on a copy of the cache as it was before the pass, and the hidden states and
greedy tokens are compared bit for bit.  The time it takes is left out of the method's
timings.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from transformers import DynamicCache

from ..engine.greedy import greedy_tokens
from ..engine.kv_cache import forward_with_cache
from ..engine.speculation.draft_tree import DraftTree
from ..engine.speculation.verify import TreeVerifier, Verified


class CheckedVerifier:
    """A ``TreeVerifier`` that re-checks each tree pass against token-by-token decoding."""

    def __init__(self, verify: TreeVerifier, keep: int = 20) -> None:
        self.verify = verify
        self.checked_passes = 0
        self.mismatched_passes = 0
        self.examples: list[dict[str, Any]] = []
        self.calls: list[float] = []
        """The time spent checking in each call, in order (0 for a pass without a tree), for
        the caller to leave out of its timings."""
        self._keep = keep

    @property
    def seconds(self) -> float:
        """All the time spent checking."""
        return sum(self.calls)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.verify, name)

    def __call__(self, cache: DynamicCache, pending: list[int], tree: DraftTree) -> Verified:
        if not len(tree):
            self.calls.append(0.0)
            return self.verify(cache, pending, tree)
        started = time.perf_counter()
        before = copy.deepcopy(cache)
        copying = time.perf_counter() - started
        result = self.verify(cache, pending, tree)
        started = time.perf_counter()
        self._compare(before, pending, tree, result)
        self.calls.append(copying + time.perf_counter() - started)
        return result

    @torch.inference_mode()
    def _compare(self, cache: DynamicCache, pending: list[int], tree: DraftTree, result: Verified) -> None:
        """Feed the pending tokens in one pass, as plain decoding feeds a prompt, then the
        accepted path's tokens one pass each (``tests/test_attention.py`` checks that a
        short chunk gives each token the bits of a pass of its own; a long prompt is one
        call of its own, ``engine.linear.PROMPT_ROWS``, and so is the plain prefill)."""
        self.checked_passes += 1
        out = forward_with_cache(self.verify.body, cache, input_ids=torch.tensor([pending], device=self.verify.device))
        states = [out.last_hidden_state[0, -1]]
        fed = [pending[-1], *(tree.tokens[node] for node in result.path)]
        for token in fed[1:]:
            out = forward_with_cache(self.verify.body, cache,
                                     input_ids=torch.tensor([[token]], device=self.verify.device))
            states.append(out.last_hidden_state[0, -1])
        reference = torch.stack(states)  # the states that predicted each accepted token
        tokens = [int(greedy_tokens(self.verify.head(state[None]))) for state in reference]
        rows = [i for i in range(len(reference)) if not torch.equal(reference[i], result.hidden[i])]
        if rows or tokens != result.accepted:
            self.mismatched_passes += 1
            if len(self.examples) < self._keep:
                self.examples.append({"position": cache.get_seq_length() - len(fed), "tree_nodes": len(tree),
                                      "accepted": len(result.accepted), "rows_differing": rows,
                                      "tokens_differ": tokens != result.accepted})

    def report(self) -> dict[str, Any]:
        return {"checked_passes": self.checked_passes, "mismatched_passes": self.mismatched_passes,
                "first_mismatches": self.examples, "check_seconds": round(self.seconds, 3)}


def install_check(decoder: Any, drafter: Any) -> CheckedVerifier:
    """Check every tree pass of ``decoder``; ``drafter`` (which sizes its trees by how long
    passes take) is told each pass's time without the check's."""
    checker = CheckedVerifier(decoder.verify)
    decoder.verify = checker
    observe = drafter.observe

    def observe_without_check(tokens: Any, tree: DraftTree, verified: Verified, seconds: float) -> None:
        observe(tokens, tree, verified, seconds - checker.calls[-1])

    drafter.observe = observe_without_check
    return checker
