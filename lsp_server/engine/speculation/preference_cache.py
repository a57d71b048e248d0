"""CodeSwift's context- and LLM-preference-aware cache.

It remembers what *this model* actually produced after a given context: the path it
accepted in a verification pass (keyed by the context's last tokens), and every block of
newly generated tokens.  Asked with the current context, it answers with the
continuations recorded under the longest matching suffix (16 tokens down to 2).  Unlike
a corpus, it captures the model's own preferences, so its drafts are accepted often.

Kept per workspace across requests, bounded (least recently used entries go first) and
persisted as JSON (never pickle) across restarts.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from .draft_tree import Draft

log = logging.getLogger(__name__)


class PreferenceCache:
    name = "cache"

    def __init__(self, max_keys: int = 50_000, min_match: int = 2, max_match: int = 16, span: int = 16) -> None:
        self.max_keys = max_keys
        self.min_match = min_match
        self.max_match = max_match
        self.span = span
        self._table: OrderedDict[tuple[int, ...], dict[tuple[int, ...], float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def add(self, context: Sequence[int], continuation: Sequence[int], weight: float = 1.0) -> None:
        """Record that ``continuation`` followed ``context`` (under every suffix length)."""
        continuation = tuple(continuation[: self.span])
        if not continuation:
            return
        for k in range(self.min_match, min(self.max_match, len(context)) + 1):
            key = tuple(context[-k:])
            entry = self._table.setdefault(key, {})
            entry[continuation] = entry.get(continuation, 0.0) + weight
            self._table.move_to_end(key)
        while len(self._table) > self.max_keys:
            self._table.popitem(last=False)

    def add_block(self, tokens: Sequence[int], min_block: int = 20) -> None:
        """Index a freshly generated block so that any later repeat of it can be drafted."""
        if len(tokens) <= min_block:
            return
        for start in range(self.min_match, len(tokens) - 1):
            self.add(tokens[max(0, start - self.max_match) : start], tokens[start : start + self.span], 0.5)

    def drafts(self, context: Sequence[int]) -> list[Draft]:
        """Continuations under the longest context suffix that has any."""
        for k in range(min(self.max_match, len(context)), self.min_match - 1, -1):
            entry = self._table.get(tuple(context[-k:]))
            if entry:
                self._table.move_to_end(tuple(context[-k:]))
                return [Draft(tokens, weight * k, self.name, k) for tokens, weight in entry.items()]
        return []

    def save(self, path: Path) -> None:
        rows = [[list(key), [[list(t), w] for t, w in entry.items()]] for key, entry in self._table.items()]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "rows": rows}))
        tmp.replace(path)

    def load(self, path: Path) -> None:
        """Load a saved cache; a missing or corrupt file leaves the cache empty."""
        try:
            data = json.loads(path.read_text())
            for key, entry in data["rows"]:
                self._table[tuple(key)] = {tuple(tokens): float(weight) for tokens, weight in entry}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable preference cache %s", path)
            self._table.clear()
