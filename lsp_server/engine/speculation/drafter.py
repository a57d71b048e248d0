"""The speculative drafter: draft sources in, one device-sized token tree out.

Sources, cheapest and most model-specific first: the preference cache (what this model
produced before), per-request sources (the prompt and the output so far) and retrieval
sources (the repository and general-code datastores), then Token Recycling for when
nothing matches, and the learned draft head (``head_drafts``): from the pass's last hidden
state it guesses a small tree of the tokens after the model's pending one, and recycled
successors continue its deepest guesses.  A float32 model also drafts with a float16 copy
of itself (``model_draft``): a chain of its greedy tokens, drafted only when the chain adds
more tokens than its time would yield at the decoding's recent rate.  Retrieval timing control (CodeSwift) skips datastore searches that are
unlikely to pay: contexts whose last bigram found nothing before (the miss table) and,
once they have proved poor, searches right after a newline.

Calibration: a draft's worth depends on its source and on how long a context suffix it
matched (measured on requests 2.32.3 with the real bodies as the output: a repository
draft after a 2-token match had its first token right 23% of the time and each further
token 54%; after a 9-16-token match, 88% and 92%).  So the drafter learns, per (source,
match-length bucket), how often the best guess for the next token is the model's token
and how often a draft that is right so far stays right one more token, the latter by
following each bucket's best draft over the next passes until it leaves the output.
Those two rates set each draft's first-token probability and how deep it reaches in the
tree.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from ..linear import PROMPT_ROWS
from .acceptance import Rate, SourceCalibration
from .budget import OnlineCost, VerifyCostModel, best_prefix
from .draft_tree import Draft, DraftTree, build_tree
from .head_drafts import HeadProposer
from .model_draft import MAX_PENDING, HalfPrecisionDraft
from .preference_cache import PreferenceCache
from .token_recycling import TokenRecycler
from .verify import Verified

log = logging.getLogger(__name__)

MATCH_BUCKETS = (0, 2, 4, 8, 16)
"""Match lengths are pooled into these buckets (0: not a suffix match, e.g. recycled tokens)."""
FIRST_PRIOR = {0: 0.25, 2: 0.3, 4: 0.4, 8: 0.55, 16: 0.8}
CONTINUATION_PRIOR = {0: 0.5, 2: 0.6, 4: 0.7, 8: 0.8, 16: 0.9}
"""Starting points only (longer matches are more reliable): a few dozen passes replace them."""
SOURCE_PRIOR = {HalfPrecisionDraft.name: (0.9, 0.95)}
"""Sources whose starting rates do not depend on a match length: the model's own float16
copy picks the model's token nearly always."""


def match_bucket(match: int) -> int:
    return next((bucket for bucket in MATCH_BUCKETS if match <= bucket), MATCH_BUCKETS[-1])


@dataclass
class _Follow:
    """A bucket's best draft, compared with the output as passes accept tokens."""

    key: tuple[str, int]
    tokens: tuple[int, ...]
    matched: int = 0


class RetrievalSource(Protocol):
    """A datastore source (``lsp_server.datastore``): weighted continuations of a context.

    One that has a ``for_language(language)`` method (a ``Datastore``) is asked for the
    sources of each request's language at its start.
    """

    name: str

    def retrieve(self, context: Sequence[int], span: int = 16, max_candidates: int = 64) -> list[Any]: ...


@dataclass
class DrafterStats:
    passes: int = 0
    drafted_passes: int = 0
    accepted_tokens: int = 0
    retrieval_skipped: int = 0
    retrieval_seconds: float = 0.0
    head_seconds: float = 0.0
    """Time spent running the draft head and turning its guesses into drafts."""
    model_draft_seconds: float = 0.0
    """Time spent drafting with the model's float16 copy."""
    model_draft_tokens: int = 0
    accepted_by_source: Counter[str] = field(default_factory=Counter)
    proposed_by_source: Counter[str] = field(default_factory=Counter)
    offered_by_source: Counter[str] = field(default_factory=Counter)
    """Passes in which the source had any draft."""
    first_token_hits: Counter[str] = field(default_factory=Counter)
    """Passes in which the source's best guess for the next token was the model's token."""
    rates: dict[tuple[str, int], tuple[Rate, Rate]] = field(default_factory=dict)
    """Per (source, match bucket): the learned first-token and continuation rates."""
    node_calibration: SourceCalibration = field(default_factory=SourceCalibration)
    """How often tree nodes were accepted, by the probability the drafter gave them and who offered them."""

    def as_json(self) -> dict[str, Any]:
        return {
            "passes": self.passes,
            "drafted_passes": self.drafted_passes,
            "accepted_draft_tokens": self.accepted_tokens,
            "retrieval_skipped": self.retrieval_skipped,
            "retrieval_seconds": round(self.retrieval_seconds, 4),
            "head_seconds": round(self.head_seconds, 4),
            "model_draft_seconds": round(self.model_draft_seconds, 4),
            "model_draft_tokens": self.model_draft_tokens,
            "accepted_by_source": dict(self.accepted_by_source),
            "proposed_by_source": dict(self.proposed_by_source),
            "first_token_hit_rate": {
                source: round(self.first_token_hits[source] / offered, 3)
                for source, offered in self.offered_by_source.items()
            },
            "offered_by_source": dict(self.offered_by_source),
            "rates_by_match_length": {
                f"{source}/{bucket}": {"first_token": round(first.value, 3), "continuation": round(cont.value, 3)}
                for (source, bucket), (first, cont) in sorted(self.rates.items())
            },
            "node_acceptance_by_probability": {
                "+".join(sorted(sources)): {f"{centre:.2f}": round(rate.value, 3)
                                            for centre, rate in zip(calibration.centres, calibration.rates)}
                for sources, calibration in sorted(self.node_calibration.by_sources.items(),
                                                   key=lambda item: sorted(item[0]))
            },
        }


@dataclass
class DrafterConfig:
    max_nodes: int = 64
    fixed_nodes: int | None = None
    """Verify exactly this many nodes instead of sizing the tree to the device."""
    span: int = 32
    """The longest continuation a source drafts (the index's units hold 16: ``datastore.index.MAX_SPAN``;
    prompt lookup and the preference cache go further).  requests, 16 tasks: 238 passes against 252
    at 16, where 16 passes had accepted a whole 16-token chain."""
    use_cache: bool = True
    use_recycling: bool = True
    recycle_off_path: bool = True
    """Token Recycling also learns from the tree nodes off the accepted path whose logits the pass
    computed (``Verified.off_path``), as the method's paper does from every node."""
    timing_control: bool = True
    left_out_sources: tuple[str, ...] = ()
    """Datastore sources not asked (by name: ``generations`` for its ablation)."""
    use_head: bool = True
    int8_head: bool = True
    """On a CPU, the draft head's weights are int8 (``engine.int8_linear``)."""
    head_document_order: bool = True
    """The head reads a FIM prompt as the file reads: the text before the cursor, then the
    output (``SpeculativeDrafter._head_position``); off, in the model's order, suffix included."""
    head_lookahead: bool = True
    """Ask the sources again after the head's top guess when none of them offered it."""
    recalibrate: bool = True
    """Map node probabilities to observed acceptance, per set of sources offering the node
    (``acceptance.SourceCalibration``), and re-rank the tree before sizing it."""
    prompt_pass: bool = True
    """Draft for the prompt's own pass too (its tree rides on the prefill)."""
    use_model_draft: bool = True
    """Draft chains with the model's float16 copy where that halves the bytes read
    (``model_draft``; a float32 model)."""
    max_chain: int = 16
    """The longest chain the float16 copy drafts in one pass."""


class SpeculativeDrafter:
    """Implements ``decoding.Drafter``; one per engine, reused across requests."""

    def __init__(
        self,
        cost: VerifyCostModel | None,
        config: DrafterConfig | None = None,
        retrieval: Sequence[RetrievalSource] = (),
        per_request: Callable[[Sequence[int]], RetrievalSource] | None = None,
        split_prompt: Callable[[Sequence[int]], tuple[list[int], list[int]]] | None = None,
        head: HeadProposer | None = None,
        model_draft: HalfPrecisionDraft | None = None,
    ) -> None:
        """``per_request`` makes a source from the document text after the cursor (tokens);
        ``split_prompt`` maps prompt ids to (text before the cursor, text after it) in tokens;
        ``head`` is the learned draft head bound to the model, if one fits it;
        ``model_draft`` the model's float16 copy, where it pays."""
        self.cost = OnlineCost(cost) if cost is not None else None
        self.config = config or DrafterConfig()
        self.retrieval = list(retrieval)
        self.per_request = per_request
        self.cache = PreferenceCache(span=self.config.span)
        self.recycler = TokenRecycler()
        self.stats = DrafterStats()
        # Running estimates per (source, match bucket), learned from every pass.
        self.rates = self.stats.rates
        self._top_guess: dict[tuple[str, int], int] = {}
        self._new_follows: list[_Follow] = []
        self._follows: list[_Follow] = []
        self._misses_by_language: dict[str | None, set[tuple[int, int]]] = {}
        self._miss_bigrams: set[tuple[int, int]] = set()
        """The miss table of the current request's language: its sources are not another language's."""
        self._newline_ids: frozenset[int] = frozenset()
        self._newline_hits = [1.0, 2.0]  # (useful, tried) for retrievals right after a newline
        self.split_prompt = split_prompt or (lambda prompt: (list(prompt), []))
        self._request_source: RetrievalSource | None = None
        self._sources: list[RetrievalSource] = []
        self._before: list[int] = []
        self._prompt_length = 0
        self._head_cut = 0
        """How many of the prompt's first positions the draft head reads (``_head_position``)."""
        self.head = head if self.config.use_head else None
        self.head_status = "draft head on" if self.head is not None else "draft head off"
        """A line for ``swiftguard.status``; the engine's builder says which head or why none."""
        self.model_draft = model_draft if self.config.use_model_draft else None
        self._draft_step: Rate | None = None
        """Seconds per token the float16 copy drafts, lately (None until it has drafted)."""
        self._throughput = [0.0, 0.0]
        """Decayed sums of tokens and seconds (drafting included) over decoding passes."""
        self._pass_draft_seconds = 0.0
        """The copy's drafting time for the pass about to be observed."""
        self._head_confidence = (Rate(0.5), Rate(0.5))
        """The head's mean probability for its top first guess, and for its top chain's second
        guess when the first was right: what its observed rates rescale it against."""
        self._head_top: tuple[float, float | None] | None = None
        self.prompt_trees_apart = False
        """Whether the model computes a prompt's tree rows in calls of their own (``linear.computes_trees_apart``):
        then a tree on a long prompt's pass must pay for a whole extra read of the weights."""
        self._built: tuple[DraftTree, list[float]] = (DraftTree.empty(), [])
        """The last tree as built, before sizing, and its nodes' uncalibrated probabilities:
        what the calibration learns from (all of it, not only the verified prefix, so a
        source set whose nodes stopped being verified still has its rate observed)."""

    def set_newline_tokens(self, ids: frozenset[int]) -> None:
        self._newline_ids = ids

    def sources_for(self, language: str | None) -> list[RetrievalSource]:
        """The retrieval sources a request in ``language`` drafts from."""
        return [source.for_language(language, self.config.left_out_sources) if hasattr(source, "for_language")
                else source for source in self.retrieval]

    def begin(self, prompt: Sequence[int], language: str | None = None) -> None:
        self._sources = self.sources_for(language)
        self._miss_bigrams = self._misses_by_language.setdefault(language, set())
        self._before, after = self.split_prompt(prompt)
        self._prompt_length = len(prompt)
        self._request_source = self.per_request(after) if self.per_request is not None else None
        self._follows = []
        # A FIM prompt's text before the cursor is its first tokens after one sentinel (``split``).
        self._head_cut = min(len(prompt), 1 + len(self._before)) if self.config.head_document_order else len(prompt)
        if self.head is not None:
            self.head.begin(prompt[: self._head_cut])

    def _head_position(self, position: int) -> int | None:
        """Where a position of the model's sequence stands in the head's, which reads a FIM
        prompt in document order: the text before the cursor, then the output, without the
        suffix and sentinels between them (None for those).

        The head trained on plain code (files, and outputs of prompts without a suffix), so
        its attention should read the positions that lead to the cursor, not the suffix's
        end, which fills its whole context with a long suffix.  The state of the output's
        first token (the last sentinel's) stands where the last prefix position's state would.
        """
        if position < self._head_cut:
            return position
        if position < self._prompt_length:
            return None
        return position - (self._prompt_length - self._head_cut)

    def _document_order(self, tokens: Sequence[int]) -> list[int]:
        """The context as the file reads: text before the cursor, then what was generated.

        A FIM prompt puts the suffix and sentinel tokens between the two; no repository
        file contains those, so matching across them would find nothing.
        """
        return [*self._before, *tokens[self._prompt_length :]]

    def _retrieve(self, tokens: Sequence[int]) -> list[Draft]:
        if not self._sources or len(tokens) < 2:
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
        drafts = [draft for source in self._sources for draft in self._ask(source, tokens)]
        self.stats.retrieval_seconds += time.perf_counter() - started
        if not drafts:
            self._miss_bigrams.add(bigram)
        if after_newline:
            self._newline_hits[0] += bool(drafts)
            self._newline_hits[1] += 1
        return drafts

    def _ask(self, source: RetrievalSource, tokens: Sequence[int]) -> list[Draft]:
        return [Draft(tuple(c.tokens), float(c.count), c.source, c.match_length)
                for c in source.retrieve(tokens, self.config.span, 32)]

    def _rates(self, key: tuple[str, int]) -> tuple[Rate, Rate]:
        if key not in self.rates:
            first, continuation = SOURCE_PRIOR.get(key[0], (FIRST_PRIOR[key[1]], CONTINUATION_PRIOR[key[1]]))
            self.rates[key] = (Rate(first), Rate(continuation))
        return self.rates[key]

    def _calibrated(self, drafts: list[Draft], learn: bool = True) -> list[Draft]:
        """Give each draft its bucket's learned rates; remember each bucket's best guess
        (unless ``learn`` is off: drafts for a context one guessed token further on)."""
        groups: dict[tuple[str, int], list[Draft]] = {}
        for draft in drafts:
            groups.setdefault((draft.source, match_bucket(draft.match)), []).append(draft)
        if learn:
            self._top_guess = {}
            self._new_follows = []
        scaled: list[Draft] = []
        for key, group in groups.items():
            total = sum(draft.weight for draft in group)
            if total <= 0:
                continue
            first_mass: Counter[int] = Counter()
            for draft in group:
                first_mass[draft.tokens[0]] += draft.weight
            guess = first_mass.most_common(1)[0][0]
            if learn:
                self._top_guess[key] = guess
                best = max((draft for draft in group if draft.tokens[0] == guess), key=lambda draft: draft.weight)
                self._new_follows.append(_Follow(key, best.tokens))
            first, continuation = self._rates(key)
            scaled += [draft._replace(weight=draft.weight / total * first.value, continuation=continuation.value)
                       for draft in group]
        return scaled

    def _matches(self, tokens: Sequence[int]) -> list[Draft]:
        """What the preference cache, the request's own text and the datastores continue ``tokens`` with."""
        drafts: list[Draft] = []
        if self.config.use_cache:
            drafts += self.cache.drafts(tokens)
        if self._request_source is not None:
            drafts += self._ask(self._request_source, tokens)
        drafts += self._retrieve(tokens)
        return [draft for draft in drafts if draft.tokens]

    def draft(self, tokens: Sequence[int], cache: DynamicCache | None = None, pending: Sequence[int] = ()) -> DraftTree:
        """``cache`` holds the keys and values of ``tokens`` but ``pending``, the tokens the
        pass will feed first: what the model's float16 copy drafts on (and leaves as it was)."""
        if not self.config.prompt_pass and len(tokens) <= self._prompt_length:
            return DraftTree.empty()
        tokens = self._document_order(tokens)
        drafts = self._matches(tokens)
        if self.config.use_recycling:
            drafts += self.recycler.drafts(tokens)
        scaled = self._calibrated([d for d in drafts if d.tokens])
        if self.head is not None:
            started = time.perf_counter()
            scaled += self._head_drafts(tokens, {draft.tokens[0] for draft in scaled})
            self.stats.head_seconds += time.perf_counter() - started
        tree = self.size_tree(build_tree(scaled, self.config.max_nodes))
        if self.model_draft is not None and cache is not None and 0 < len(pending) <= MAX_PENDING:
            chain = self._model_chain(tree, cache, pending)
            if chain:
                tree = self.size_tree(build_tree([*scaled, *chain], self.config.max_nodes))
        if self.prompt_trees_apart and len(pending) > PROMPT_ROWS:
            tree = tree.prefix(self._paying_on_prompt(tree))
        return tree

    def _paying_on_prompt(self, tree: DraftTree) -> int:
        """How many of a sized tree's nodes to verify on a long prompt's pass, whose tree rows are
        computed apart from the prompt's (``linear.tree_rows_apart``): the first costs about a
        decoding pass of that size, not the small step a node adds to one.  Keep the prefix whose
        expected accepted tokens, at the recent decoding rate, save more time than it costs;
        before any decoding pass has been measured, the whole tree.

        While the user types, the prompt's pass re-feeds a few hundred tokens, and on requests
        (16 functions, each typed four lines deep: ``swiftguard replay``) such trees saved 3 passes
        in 62 requests and cost 49 ms of time to the first token at the median."""
        rate = self.throughput()
        if rate is None or self.cost is None:
            return len(tree)
        best, best_gain, expected = 0, 0.0, 0.0
        for nodes, probability in enumerate(tree.probabilities, start=1):
            expected += probability
            gain = expected / rate - self.cost(nodes)
            if gain > best_gain:
                best, best_gain = nodes, gain
        return best

    def _model_chain(self, tree: DraftTree, cache: DynamicCache, pending: Sequence[int]) -> list[Draft]:
        """The float16 copy's chain, if one adds to ``tree`` (the other sources', sized) on
        this device, as long as it pays (``chain_limit``); at a near-tie where it ends, the
        other token too, with half the last token's mass each."""
        key = (HalfPrecisionDraft.name, 0)
        first, continuation = self._rates(key)
        limit = self.chain_limit(first.value, continuation.value, tree)
        if not limit:
            return []
        started = time.perf_counter()
        tokens, runner_up = self.model_draft.chain(cache, pending, limit)  # type: ignore[union-attr]
        seconds = time.perf_counter() - started
        self.stats.model_draft_seconds += seconds
        self._pass_draft_seconds = seconds
        if not tokens:
            return []
        self.stats.model_draft_tokens += len(tokens)
        if self._draft_step is None:
            self._draft_step = Rate(seconds / len(tokens), strength=1.0, decay=0.9)
        else:
            self._draft_step.update(seconds / len(tokens))
        self._top_guess[key] = tokens[0]
        self._new_follows.append(_Follow(key, tuple(tokens)))
        masses = [first.value * continuation.value ** depth for depth in range(len(tokens))]
        if runner_up is None:
            return [Draft(tuple(tokens), first.value, HalfPrecisionDraft.name, masses=tuple(masses))]
        masses[-1] /= 2
        return [Draft(tuple(tokens), first.value, HalfPrecisionDraft.name, masses=tuple(masses)),
                Draft((*tokens[:-1], runner_up), first.value, HalfPrecisionDraft.name,
                      masses=(0.0,) * (len(tokens) - 1) + (masses[-1],))]

    def chain_limit(self, first: float, continuation: float, tree: DraftTree) -> int:
        """How many tokens the float16 copy should draft on top of ``tree`` (the other
        sources', sized): the length whose extra expected tokens most exceed what its extra
        time (drafting, and the bigger verify pass) yields at the decoding's recent rate.
        0 where that gain is not positive: the sources have the next tokens, retrieval keeps
        decoding fast, or the device makes a draft token cost about as much as a pass.

        The recent rate is the yardstick, not this pass's tree alone: on repository code a
        weak tree is often followed by a long stretch that retrieval drafts for free, and
        the copy's chain would have paid for those tokens (8 requests tasks: with the chain
        measured against the tree alone, 150 instead of 123 ms a token)."""
        if self.cost is None:
            return self.config.max_chain
        step = self._draft_step.value if self._draft_step is not None else 0.5 * self.cost(0)
        base_expected, base_cost = 1.0 + sum(tree.probabilities), self.cost(len(tree))
        rate = self.throughput() or base_expected / base_cost
        best, best_gain = 0, 0.0
        expected, p = 1.0, first
        for k in range(1, self.config.max_chain + 1):
            expected += p
            p *= continuation
            extra_tokens = max(expected, base_expected) - base_expected
            extra_seconds = k * step + self.cost(k + len(tree)) - base_cost
            gain = extra_tokens - rate * extra_seconds
            if gain > best_gain:
                best, best_gain = k, gain
        return best

    def throughput(self) -> float | None:
        """Tokens per second over recent decoding passes, drafting time included (None before any)."""
        tokens, seconds = self._throughput
        return tokens / seconds if seconds > 0 else None

    def size_tree(self, tree: DraftTree) -> DraftTree:
        """Recalibrate a built tree's probabilities to observed acceptance, re-rank it, and
        keep the prefix that pays on this device (or the configured fixed size)."""
        raw = tree.probabilities
        if self.config.recalibrate:
            tree, order = tree.reranked(self.stats.node_calibration(raw, tree.sources))
            raw = [raw[old] for old in order]
        if self.config.fixed_nodes is not None:
            keep = self.config.fixed_nodes
        elif self.cost is not None:
            keep = best_prefix(tree.probabilities, self.cost, self.config.max_nodes)
        else:
            keep = len(tree)
        self._built = (tree, raw)
        return tree.prefix(keep)

    def _head_drafts(self, tokens: Sequence[int], offered: set[int]) -> list[Draft]:
        """The head's tree of guesses, each node with a calibrated probability, its deepest
        guesses continued along recycled successors.  When no other source offered the head's
        top guess, the sources are asked again with that guess appended: they may continue
        it where they could not guess it.

        The head's softmax is rescaled to what has been observed: its first guess by how often
        the top first guess was right lately, deeper guesses by how often its top chain went
        on being right (both against the head's own mean confidence in those guesses).
        """
        nodes = self.head.tree()  # type: ignore[union-attr]
        if not nodes:  # the prompt's end not read yet: its own pass, unless the last request read it
            return []
        key = (HeadProposer.name, 0)
        first_rate, deep_rate = self._rates(key)
        first_scale = first_rate.value / max(self._head_confidence[0].value, 1e-3)
        deep_scale = deep_rate.value / max(self._head_confidence[1].value, 1e-3)
        probability: dict[tuple[int, ...], float] = {}
        for node in nodes:  # parents come first
            scale = first_scale if len(node.path) == 1 else deep_scale
            probability[node.path] = probability.get(node.path[:-1], 1.0) * min(1.0, node.conditional * scale)
        chain = self._top_chain(nodes)
        self._top_guess[key] = chain[0][0]
        self._new_follows.append(_Follow(key, tuple(token for token, _ in chain)))
        self._head_top = (chain[0][1], chain[1][1] if len(chain) > 1 else None)
        continuation = self._rates((self.recycler.name, 0))[1].value
        expanded = {node.path[:-1] for node in nodes}
        drafts: list[Draft] = []
        guess = chain[0][0]
        if self.config.head_lookahead and guess not in offered:
            p = probability[(guess,)]
            for after in self._calibrated(self._matches([*tokens, guess]), learn=False):
                masses = [p * after.weight * after.continuation ** k for k in range(len(after.tokens))]
                drafts.append(Draft((guess, *after.tokens), p, after.source, masses=(0.0, *masses)))
        for path, p in probability.items():
            drafts.append(Draft(path, p, HeadProposer.name, masses=(0.0,) * (len(path) - 1) + (p,)))
            tails = self.recycler.drafts([path[-1]]) if self.config.use_recycling and path not in expanded else []
            total = sum(tail.weight for tail in tails)
            for tail in tails:
                share = p * tail.weight / total
                masses = [share * continuation ** (k + 1) for k in range(len(tail.tokens))]
                drafts.append(Draft(path + tail.tokens, share, HeadProposer.name,
                                    masses=(0.0,) * len(path) + tuple(masses)))
        return drafts

    @staticmethod
    def _top_chain(nodes: Sequence[Any]) -> list[tuple[int, float]]:
        """The head's best guess at each depth along its best path: (token, conditional probability)."""
        chain: list[tuple[int, float]] = []
        path: tuple[int, ...] = ()
        while True:
            children = [node for node in nodes if node.path[:-1] == path and len(node.path) == len(path) + 1]
            if not children:
                return chain
            best = max(children, key=lambda node: node.conditional)
            chain.append((best.path[-1], best.conditional))
            path = best.path

    def observe(self, tokens: Sequence[int], tree: DraftTree, verified: Verified, seconds: float) -> None:
        """Learn from one pass: its cost, acceptance rate, recycled candidates, per-source credit."""
        self.stats.passes += 1
        if self.head is not None:
            fed = verified.fed_states
            if fed is not None and len(fed):  # the pending tokens after the first, as fed
                start = len(tokens) - len(fed)
                for first, end in ((start, min(len(tokens), self._head_cut)),
                                   (max(start, self._prompt_length), len(tokens))):
                    if first < end:
                        self.head.extend(fed[first - start : end - start], tokens[first:end],
                                         self._head_position(first))
            self.head.extend(verified.hidden, verified.accepted, self._head_position(len(tokens)))
            if self._head_top is not None:
                first, second = self._head_top
                self._head_confidence[0].update(first)
                if second is not None and self._top_guess.get((HeadProposer.name, 0)) == verified.accepted[0]:
                    self._head_confidence[1].update(second)
                self._head_top = None
        if len(tokens) > self._prompt_length:  # decoding passes only: the prompt pass is not a tree
            if self.cost is not None:
                self.cost.observe(len(tree), seconds)
            decay = 0.95
            self._throughput = [self._throughput[0] * decay + len(verified.accepted),
                                self._throughput[1] * decay + seconds + self._pass_draft_seconds]
        self._pass_draft_seconds = 0.0
        if self.config.use_recycling:
            if self.config.recycle_off_path and verified.off_path:  # first: the accepted path's rows win a tie
                off_tokens, off_logits = zip(*verified.off_path)
                self.recycler.observe(list(off_tokens), torch.stack(off_logits))
            path_tokens = [tree.tokens[node] for node in verified.path]
            self.recycler.observe([tokens[-1], *path_tokens], verified.logits)
        hit_by_source: dict[str, bool] = {}  # per-source statistics count a source once per pass
        for key, guess in self._top_guess.items():
            hit = guess == verified.accepted[0]
            self._rates(key)[0].update(hit)
            hit_by_source[key[0]] = hit_by_source.get(key[0], False) or hit
        for source, hit in hit_by_source.items():
            self.stats.offered_by_source[source] += 1
            self.stats.first_token_hits[source] += hit
        self._top_guess = {}
        self._follow(verified.accepted)
        if not len(tree):
            return
        self.stats.drafted_passes += 1
        self.stats.accepted_tokens += len(verified.path)
        built, raw = self._built
        self.stats.node_calibration.observe(raw, built.sources, built.outcomes(verified.accepted))
        for node in range(len(tree)):
            for source in tree.sources[node]:
                self.stats.proposed_by_source[source] += 1
        for node in verified.path:
            for source in tree.sources[node]:
                self.stats.accepted_by_source[source] += 1

    def _follow(self, accepted: Sequence[int]) -> None:
        """Walk the followed drafts along this pass's tokens: each token a draft got right
        after its first is a continuation hit, the token where it leaves the output a miss."""
        still: list[_Follow] = []
        for follow in [*self._follows, *self._new_follows]:
            continuation = self._rates(follow.key)[1]
            for token in accepted:
                if follow.matched == len(follow.tokens):
                    break
                if follow.tokens[follow.matched] != token:
                    if follow.matched:
                        continuation.update(False)
                    follow.matched = -1
                    break
                if follow.matched:
                    continuation.update(True)
                follow.matched += 1
            if 0 < follow.matched < len(follow.tokens):
                still.append(follow)
        self._follows, self._new_follows = still, []

    def finish(self, prompt: Sequence[int], generated: Sequence[int]) -> None:
        """After a completion: remember the model's output for later requests."""
        if self.config.use_cache and generated:
            self.cache.add_block([*self._before[-self.cache.max_match :], *generated], min_block=self.cache.min_match)
