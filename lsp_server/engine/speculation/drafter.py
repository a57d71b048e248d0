"""The speculative drafter: draft sources in, one device-sized token tree out.

Sources, cheapest and most model-specific first: the preference cache (what this model
produced before), per-request sources (the prompt and the output so far) and retrieval
sources (the repository and general-code datastores), then Token Recycling for when
nothing matches.  Retrieval timing control (CodeSwift) skips datastore searches that are
unlikely to pay: contexts whose last bigram found nothing before (the miss table) and,
once they have proved poor, searches right after a newline.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .budget import VerifyCostModel, best_prefix
from .draft_tree import DraftTree, build_tree
from .preference_cache import PreferenceCache
from .token_recycling import TokenRecycler
from .verify import Verified

log = logging.getLogger(__name__)

Draft = tuple[tuple[int, ...], float, str]


class RetrievalSource(Protocol):
    """A datastore source (``lsp_server.datastore``): weighted continuations of a context."""

    name: str

    def retrieve(self, context: Sequence[int], span: int = 16, max_candidates: int = 64) -> list[Any]: ...


@dataclass
class DrafterStats:
    passes: int = 0
    drafted_passes: int = 0
    accepted_tokens: int = 0
    retrieval_skipped: int = 0
    retrieval_seconds: float = 0.0
    accepted_by_source: Counter[str] = field(default_factory=Counter)
    proposed_by_source: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        return {
            "passes": self.passes,
            "drafted_passes": self.drafted_passes,
            "accepted_draft_tokens": self.accepted_tokens,
            "retrieval_skipped": self.retrieval_skipped,
            "retrieval_seconds": round(self.retrieval_seconds, 4),
            "accepted_by_source": dict(self.accepted_by_source),
            "proposed_by_source": dict(self.proposed_by_source),
        }


@dataclass
class DrafterConfig:
    max_nodes: int = 64
    fixed_nodes: int | None = None
    """Verify exactly this many nodes instead of sizing the tree to the device."""
    span: int = 16
    use_cache: bool = True
    use_recycling: bool = True
    timing_control: bool = True


class SpeculativeDrafter:
    """Implements ``decoding.Drafter``; one per engine, reused across requests."""

    def __init__(
        self,
        cost: VerifyCostModel | None,
        config: DrafterConfig | None = None,
        retrieval: Sequence[RetrievalSource] = (),
        per_request: Callable[[Sequence[int]], RetrievalSource] | None = None,
    ) -> None:
        self.cost = cost
        self.config = config or DrafterConfig()
        self.retrieval = list(retrieval)
        self.per_request = per_request
        self.cache = PreferenceCache(span=self.config.span)
        self.recycler = TokenRecycler()
        self.stats = DrafterStats()
        self.acceptance = 0.6  # running estimate that the best depth-1 draft is right
        self._miss_bigrams: set[tuple[int, int]] = set()
        self._newline_ids: frozenset[int] = frozenset()
        self._newline_hits = [1.0, 2.0]  # (useful, tried) for retrievals right after a newline
        self._request_source: RetrievalSource | None = None

    def set_newline_tokens(self, ids: frozenset[int]) -> None:
        self._newline_ids = ids

    def begin(self, prompt: Sequence[int]) -> None:
        self._request_source = self.per_request(prompt) if self.per_request is not None else None

    def _retrieve(self, tokens: Sequence[int]) -> list[Draft]:
        if not self.retrieval or len(tokens) < 2:
            return []
        bigram = (tokens[-2], tokens[-1])
        after_newline = tokens[-1] in self._newline_ids
        if self.config.timing_control and (
            bigram in self._miss_bigrams
            or (after_newline and self._newline_hits[0] / self._newline_hits[1] < 0.2)
        ):
            self.stats.retrieval_skipped += 1
            return []
        started = time.perf_counter()
        drafts = [draft for source in self.retrieval for draft in self._ask(source, tokens)]
        self.stats.retrieval_seconds += time.perf_counter() - started
        if not drafts:
            self._miss_bigrams.add(bigram)
        if after_newline:
            self._newline_hits[0] += bool(drafts)
            self._newline_hits[1] += 1
        return drafts

    def _ask(self, source: RetrievalSource, tokens: Sequence[int]) -> list[Draft]:
        return [(tuple(c.tokens), float(c.count), c.source) for c in source.retrieve(tokens, self.config.span, 32)]

    def draft(self, tokens: Sequence[int]) -> DraftTree:
        drafts: list[Draft] = []
        if self.config.use_cache:
            drafts += self.cache.drafts(tokens)
        if self._request_source is not None:
            drafts += self._ask(self._request_source, tokens)
        drafts += self._retrieve(tokens)
        if self.config.use_recycling:
            drafts += self.recycler.drafts(tokens)
        tree = build_tree(drafts, self.config.max_nodes, self.acceptance)
        if self.config.fixed_nodes is not None:
            keep = self.config.fixed_nodes
        elif self.cost is not None:
            keep = best_prefix(tree.probabilities, self.cost, self.config.max_nodes)
        else:
            keep = len(tree)
        return tree.prefix(keep)

    def observe(self, tokens: Sequence[int], tree: DraftTree, verified: Verified, seconds: float) -> None:
        """Learn from one pass: acceptance rate, recycled candidates, per-source credit."""
        self.stats.passes += 1
        if self.config.use_recycling:
            path_tokens = [tree.tokens[node] for node in verified.path]
            self.recycler.observe([tokens[-1], *path_tokens], verified.logits)
        if not len(tree):
            return
        self.stats.drafted_passes += 1
        self.stats.accepted_tokens += len(verified.path)
        best_first = max((i for i, p in enumerate(tree.parents) if p == -1), key=lambda i: tree.probabilities[i])
        hit = bool(verified.path) and verified.path[0] == best_first
        self.acceptance = 0.9 * self.acceptance + 0.1 * hit
        for node in range(len(tree)):
            for source in tree.sources[node]:
                self.stats.proposed_by_source[source] += 1
        for node in verified.path:
            for source in tree.sources[node]:
                self.stats.accepted_by_source[source] += 1

    def finish(self, prompt: Sequence[int], generated: Sequence[int]) -> None:
        """After a completion: remember the model's output for later requests."""
        if self.config.use_cache and generated:
            self.cache.add_block([*prompt[-self.cache.max_match :], *generated], min_block=self.cache.min_match)
