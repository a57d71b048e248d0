"""Answer a keystroke from the previous completion when the user is typing through it.

If the user types exactly the characters the last suggestion began with, the rest of
that suggestion is still the model's answer (greedy decoding is deterministic and the
context only grew by the text the model itself proposed), so no forward pass is needed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class _Shown:
    document_key: str
    prefix: str
    suffix: str
    completion: str


class TypeaheadCache:
    """Remembers the last completion per document."""

    def __init__(self, max_documents: int = 32) -> None:
        self._shown: dict[str, _Shown] = {}
        self._max_documents = max_documents

    def remember(self, document_key: str, prefix: str, suffix: str, completion: str) -> None:
        if not completion:
            self._shown.pop(document_key, None)
            return
        self._shown.pop(document_key, None)
        self._shown[document_key] = _Shown(document_key, prefix, suffix, completion)
        while len(self._shown) > self._max_documents:
            del self._shown[next(iter(self._shown))]

    def lookup(self, document_key: str, prefix: str, suffix: str) -> str | None:
        """The rest of the last completion, if ``prefix`` typed part of it; else None."""
        shown = self._shown.get(document_key)
        if shown is None or suffix != shown.suffix or len(prefix) < len(shown.prefix):
            return None
        if not prefix.startswith(shown.prefix):
            return None
        typed = prefix[len(shown.prefix) :]
        if not shown.completion.startswith(typed) or len(typed) == len(shown.completion):
            return None
        return shown.completion[len(typed) :]

    def clear(self) -> None:
        self._shown.clear()
