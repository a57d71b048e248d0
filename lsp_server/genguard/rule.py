"""GenGuard's decision rule: CodeFast's line voting, as a ``StopRule``.

Every token whose text has something other than a line break votes stop/continue (its
stop probability against the threshold); the vote counts for the line its first
character lies on.  When a line break arrives, the line just ended is judged: a strict
majority of stop votes means the line is already excess, so the completion is cut at the
START of that line (after dropping the blank lines before it): the code that came before
was judged complete, the voted line was not wanted.  More than ``max_empty_lines``
consecutive empty lines also stop (cut before them).  Nothing is judged before
``min_new_tokens`` tokens.

The vote of accepted token j uses ``hidden[j]``, the state from which token j was
predicted (see ``engine.stopping``); the head was trained with exactly that alignment
(``genguard.data``).  Under speculation a step carries several tokens: they are scored in
one product and then replayed one by one through the same rule, and the rule remembers
nothing about step boundaries, so the decision and the cut position do not depend on how
many tokens a step accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..stop_rule import StopDecision
from ..syntax.stop import unfinished
from .head import GuardHead


class GenGuardStop:
    """Line-voting stop rule over a GenGuard head's per-token stop probabilities."""

    def __init__(self, head: GuardHead, tokenizer: Any, threshold: float = 0.5, min_new_tokens: int = 10,
                 max_empty_lines: int = 3, language: str | None = None) -> None:
        self.head = head
        self.language = language
        """With a tree-sitter language, a vote to stop where the kept output is unfinished (no code yet, an open
        bracket or string, a block header without body: ``syntax.stop.unfinished``) is overruled and the line
        counts as kept code: the classifier's worst mistakes are exactly there."""
        self.tokenizer = tokenizer
        self.threshold = threshold
        self.min_new_tokens = min_new_tokens
        self.max_empty_lines = max_empty_lines
        self.begin("", "")

    def begin(self, prefix: str, suffix: str) -> None:
        self._ids: list[int] = []
        self._base = 0  # tokens before ``_base`` are decoded into ``_text`` for good (they end at a line break)
        self._text = ""  # text of tokens [0, _base)
        self._tail = ""  # text of tokens [_base, len(_ids)) as decoded last time
        self._line_start = 0
        self._votes: list[bool] = []
        self._empty_run = 0
        self._kept_end = 0  # end (after its newline) of the last non-empty line
        self._decision: StopDecision | None = None
        self.probabilities: list[float] = []
        """Every scored token's stop probability, for inspection and evaluation."""

    def step(self, text: str, accepted: Sequence[int], hidden: Any) -> StopDecision | None:
        if self._decision is not None:
            return self._decision
        if not accepted:
            return None
        if hidden is None:
            raise ValueError("GenGuard needs the decoder's hidden states (this decoding method does not provide them)")
        probabilities = self.head.stop_probability(hidden[: len(accepted)])
        for token, probability in zip(accepted, probabilities):
            self._decision = self.push(int(token), float(probability))
            if self._decision is not None:
                return self._decision
        return None

    def push(self, token: int, probability: float) -> StopDecision | None:
        """One token and its stop probability, in generation order."""
        self.probabilities.append(probability)
        self._ids.append(token)
        tail = self.tokenizer.decode(self._ids[self._base :])
        stable = len(self._tail.rstrip("\ufffd"))  # an unfinished UTF-8 character may be re-decoded
        piece, offset = tail[stable:], len(self._text) + stable
        self._tail = tail
        voted = False
        decision = None
        for index, char in enumerate(piece):
            if char == "\n":
                decision = self._end_line(offset + index)
                if decision is not None:
                    return decision
            elif not voted:
                self._votes.append(probability >= self.threshold)
                voted = True
        if tail.endswith("\n"):  # a clean token boundary at a line start: decode from here on
            self._text += tail
            self._tail = ""
            self._base = len(self._ids)
        return decision

    def _end_line(self, newline: int) -> StopDecision | None:
        """The line [line_start, newline) is complete: judge it."""
        line = self._full_text()[self._line_start : newline]
        votes, self._votes = self._votes, []
        self._line_start = newline + 1
        judged = len(self._ids) >= self.min_new_tokens
        if line.strip():
            if judged and 2 * sum(votes) > len(votes):
                if not unfinished(self._full_text()[: self._kept_end], self.language):
                    return StopDecision(self._kept_end, "genguard")  # blank lines before the voted line go too
            self._empty_run = 0
            self._kept_end = newline + 1
            return None
        self._empty_run += 1
        if judged and self._empty_run > self.max_empty_lines:
            return StopDecision(self._kept_end, "genguard-empty-lines")
        return None

    def _full_text(self) -> str:
        return self._text + self._tail
