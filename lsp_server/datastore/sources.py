"""Draft sources behind one interface, and the :class:`Datastore` that merges them."""

from __future__ import annotations

import logging
from collections.abc import Collection, MutableMapping, Sequence

import numpy as np

from .index import MAX_K, MAX_SPAN, MIN_K, SEP, Match, TokenIndex
from .types import Candidate, DraftSource

log = logging.getLogger(__name__)

MAX_HITS = 256
"""Occurrences read per lookup; beyond it a sample is read (counts scaled up)."""


def _candidates(match: Match | None, name: str, weight: float, max_candidates: int) -> list[Candidate]:
    if match is None or max_candidates <= 0:
        return []
    ranked = sorted(zip(match.counts, match.continuations), key=lambda item: (-item[0], item[1]))
    return [Candidate(tokens, count * weight, name, match.length) for count, tokens in ranked[:max_candidates]]


class IndexSource:
    """A :class:`TokenIndex` (the repository's, the general corpus') as a draft source."""

    def __init__(self, name: str, index: TokenIndex, weight: float = 1.0, max_hits: int = MAX_HITS) -> None:
        self.name = name
        self.index = index
        self.weight = weight
        self.max_hits = max_hits

    def retrieve(self, context: Sequence[int], span: int = 16, max_candidates: int = 64) -> list[Candidate]:
        return _candidates(self.index.lookup(context, span, self.max_hits), self.name, self.weight, max_candidates)


CONTEXT_SPAN = 2 * MAX_SPAN
"""The longest continuation prompt lookup returns: the document's own text is at hand, so
it may run past what the index's units keep (``MAX_SPAN``).  With 16, one pass in fifteen
of a repository benchmark accepted the whole chain (requests, 16 tasks)."""


class ContextSource:
    """Prompt lookup: continuations of the context's suffix found earlier in the context itself.

    Built per request from extra tokens the context may not hold (the whole document, the
    text after the cursor); every ``retrieve`` also searches the context it is given (prompt
    plus the tokens generated so far), except its own final position.  A linear scan in
    numpy: a few thousand tokens cost tens of microseconds, nothing to build or persist.
    """

    def __init__(self, tokens: Sequence[int] = (), name: str = "document", weight: float = 1.0,
                 max_hits: int = MAX_HITS) -> None:
        self.name = name
        self.weight = weight
        self.max_hits = max_hits
        self._extra = np.asarray(tokens, dtype=np.int64)

    def retrieve(self, context: Sequence[int], span: int = 16, max_candidates: int = 64) -> list[Candidate]:
        ctx = np.asarray(context, dtype=np.int64)
        if len(ctx) < MIN_K:
            return []
        text = np.concatenate((self._extra, [SEP], ctx)) if len(self._extra) else ctx
        span = max(1, min(span, CONTEXT_SPAN))
        # Positions p whose preceding token is the context's last; p < len(text) leaves a
        # continuation, which excludes the context's own end.
        positions = np.flatnonzero(text[:-1] == ctx[-1]) + 1
        depth = 1
        for d in range(2, min(MAX_K, len(ctx)) + 1):
            keep = positions >= d
            keep[keep] = text[positions[keep] - d] == ctx[-d]
            if not keep.any():
                break
            positions, depth = positions[keep], d
        if depth < MIN_K:
            return []
        hits = len(positions)
        if hits > self.max_hits:
            positions = positions[-self.max_hits :]  # the most recent occurrences
        padded = np.concatenate((text, np.full(span, SEP, dtype=np.int64)))
        rows = padded[positions[:, None] + np.arange(span)]
        rows[np.cumsum(rows == SEP, axis=1) > 0] = SEP
        counts: dict[tuple[int, ...], int] = {}
        for row in rows.tolist():
            end = row.index(SEP) if SEP in row else span
            key = tuple(row[:end])
            counts[key] = counts.get(key, 0) + 1
        scale = hits / len(rows)
        match = Match(depth, list(counts), [c * scale for c in counts.values()], hits)
        return _candidates(match, self.name, self.weight, max_candidates)


class Datastore:
    """Several weighted sources behind one interface.

    ``by_language`` holds sources that serve documents of one language only (general
    code: the Python standard library is no draft for a Go file), by language and source
    name; the owner may add to it at any time, and :meth:`for_language` picks from it per
    request.
    """

    def __init__(self, sources: Sequence[DraftSource] = (),
                 by_language: MutableMapping[str, dict[str, DraftSource]] | None = None) -> None:
        self.sources = tuple(sources)
        self.by_language: MutableMapping[str, dict[str, DraftSource]] = by_language if by_language is not None else {}

    def for_language(self, language: str | None, without: Collection[str] = ()) -> Datastore:
        """The sources for one document: the shared ones and, if any, its language's own;
        none named in ``without``."""
        own = self.by_language.get(language, {}) if language else {}
        return Datastore(tuple(source for source in (*self.sources, *own.values()) if source.name not in without))

    def add_for_language(self, language: str, source: DraftSource) -> None:
        """Serve documents in ``language`` from ``source`` too, in place of its namesake there."""
        self.by_language[language] = {**self.by_language.get(language, {}), source.name: source}

    def retrieve(self, context: Sequence[int], span: int = 16, max_candidates: int = 64) -> list[Candidate]:
        """Longest-suffix exact match (k from 16 down to 2, longest match first) in every source,
        continuations up to ``span`` tokens with counts, merged with per-source weights; sorted
        by count desc.

        The same continuation from several sources is one candidate: counts add up, and it
        keeps the source that contributed most and the longest match length.  A source
        that fails is logged and skipped.
        """
        merged: dict[tuple[int, ...], list] = {}  # tokens -> [count, best share, source, k]
        for source in self.sources:
            try:
                found = source.retrieve(context, span, max_candidates)
            except Exception:
                log.exception("draft source %s failed", getattr(source, "name", source))
                continue
            for candidate in found:
                entry = merged.get(candidate.tokens)
                if entry is None:
                    merged[candidate.tokens] = [candidate.count, candidate.count, candidate.source,
                                                candidate.match_length]
                    continue
                entry[0] += candidate.count
                if candidate.count > entry[1]:
                    entry[1], entry[2] = candidate.count, candidate.source
                entry[3] = max(entry[3], candidate.match_length)
        ranked = sorted(merged.items(), key=lambda item: (-item[1][0], -item[1][3], item[0]))
        return [Candidate(tokens, count, source, k) for tokens, (count, _, source, k) in ranked[:max_candidates]]
