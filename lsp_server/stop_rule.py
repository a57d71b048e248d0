"""The stop-rule seam, shared by the engine, the syntax rules and GenGuard (no torch here).

The decoder calls every rule after each decoding step with the completion text so far
and the tokens accepted in that step, together with their hidden states.  ``hidden[j]``
is the final-norm hidden state *from which* ``accepted[j]`` was predicted (the model's
view just before that token), so a learned rule gets it for free from the forward pass
that was run anyway, and a speculative step hands over several at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class StopDecision:
    keep_chars: int
    """Length of the completion text to keep; everything after it is discarded."""
    reason: str


class StopRule(Protocol):
    def begin(self, prefix: str, suffix: str) -> None:
        """Called once per completion, before the first step."""
        ...

    def step(self, text: str, accepted: Sequence[int], hidden: Any) -> StopDecision | None:
        """Judge the completion after one decoding step; None means go on."""
        ...
