"""The contract between the datastore and the speculative decoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

Encode = Callable[[str], list[int]]
EncodeBatch = Callable[[list[str]], list[list[int]]]


@dataclass(frozen=True)
class Candidate:
    tokens: tuple[int, ...]
    """The continuation that followed the matched context suffix, 1..span tokens."""
    count: float
    """Occurrences of this continuation, times the source's weight."""
    source: str
    """``repository``, ``general``, ``document``, ..."""
    match_length: int
    """How many trailing context tokens matched (k)."""


class DraftSource(Protocol):
    name: str
    weight: float

    def retrieve(self, context: Sequence[int], span: int = 16, max_candidates: int = 64) -> list[Candidate]:
        """Continuations of the longest matching suffix of ``context``, most frequent first."""
        ...
