"""How close a repository completion comes to the body its task removed.

Speed alone cannot choose prompt settings (how much context, how much of it after the
cursor): a shorter prompt is always faster.  These are the two measures of
repository-level completion benchmarks (CrossCodeEval, RepoBench): edit similarity of the
whole completion to the removed body, and whether the first line is exactly right (what an
editor shows first, and what a user accepts most often).  Trailing whitespace is ignored;
anything generated past the body counts against the completion, as the user would have to
delete it.
"""

from __future__ import annotations

from rapidfuzz.distance import Levenshtein


def edit_similarity(completion: str, reference: str) -> float:
    """1 - Levenshtein distance / length of the longer text (1.0: identical)."""
    return Levenshtein.normalized_similarity(completion.rstrip(), reference.rstrip())


def first_line_exact(completion: str, reference: str) -> bool:
    """The first non-blank line of both, without surrounding whitespace, is the same."""
    return _first_line(completion) == _first_line(reference)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
