"""When to stop generating: the baseline rules and their combination (see ``stop_rule``).

The baseline rules work on text alone: stop when a line dedents out of the cursor's
block, and stop when the model starts re-typing the text after the cursor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..stop_rule import StopDecision, StopRule

_OPENERS = (":", "{", "(", "[")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _complete_lines(text: str) -> list[tuple[int, str]]:
    """(offset, line) for each line of ``text`` that is already ended by a newline."""
    lines = []
    offset = 0
    while (end := text.find("\n", offset)) != -1:
        lines.append((offset, text[offset:end].rstrip("\r")))
        offset = end + 1
    return lines


class DedentStop:
    """Stop when a line leaves the block the cursor is in.

    The reference is the cursor line's indentation.  When that line opens a block
    (``def f():`` or ``{``), leaving the block means coming back to its indentation;
    otherwise it means going below it.  The first line continues the cursor line and is
    never judged.
    """

    def begin(self, prefix: str, suffix: str) -> None:
        line = prefix[prefix.rfind("\n") + 1 :]
        self._reference = _indent(line) if line.strip() else len(line.expandtabs(4))
        self._opens_block = line.rstrip().endswith(_OPENERS)
        self._checked = 0

    def step(self, text: str, accepted: Sequence[int], hidden: Any) -> StopDecision | None:
        lines = _complete_lines(text)
        decision = None
        for offset, line in lines[max(self._checked, 1) :]:
            if not line.strip():
                continue
            indent = _indent(line.expandtabs(4))
            if indent < self._reference or (self._opens_block and indent <= self._reference):
                decision = StopDecision(offset, "dedent")
                break
        self._checked = len(lines)
        return decision


class SuffixRepeatStop:
    """Stop when a generated line repeats the first non-blank line after the cursor."""

    def begin(self, prefix: str, suffix: str) -> None:
        self._target = next((line.strip() for line in suffix.splitlines() if line.strip()), None)
        self._checked = 0

    def step(self, text: str, accepted: Sequence[int], hidden: Any) -> StopDecision | None:
        if self._target is None:
            return None
        lines = _complete_lines(text)
        decision = None
        for offset, line in lines[max(self._checked, 1) :]:
            if line.strip() == self._target:
                decision = StopDecision(offset, "repeats-suffix")
                break
        self._checked = len(lines)
        return decision


class StopRules:
    """Several rules as one: the earliest cut wins."""

    def __init__(self, rules: Sequence[StopRule]) -> None:
        self.rules = list(rules)

    def begin(self, prefix: str, suffix: str) -> None:
        for rule in self.rules:
            rule.begin(prefix, suffix)

    def step(self, text: str, accepted: Sequence[int], hidden: Any) -> StopDecision | None:
        decisions = [d for rule in self.rules if (d := rule.step(text, accepted, hidden)) is not None]
        return min(decisions, key=lambda d: d.keep_chars, default=None)


def baseline_rules() -> StopRules:
    return StopRules([DedentStop(), SuffixRepeatStop()])


def tidy_completion(text: str, suffix: str) -> str:
    """Final clean-up: drop trailing blank space and a tail that the suffix already has.

    ``print(x)`` before a suffix starting with ``)`` becomes ``print(x``: the editor keeps
    the text after the cursor, so inserting the bracket again would double it.
    """
    text = text.rstrip()
    first_line = suffix.split("\n", 1)[0].rstrip()
    if first_line.strip() and text.endswith(first_line):
        text = text[: -len(first_line)].rstrip(" \t")
    return text
