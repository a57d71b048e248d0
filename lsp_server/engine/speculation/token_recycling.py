"""Token Recycling: draft from the candidates the model itself ranked before.

Every verification pass computes full logits at the positions along the accepted path;
their top-k tokens are a free guess of what tends to follow the token at that position.
An adjacency table (token -> its k most likely successors, last seen) turns those into
a small draft tree with no corpus at all, which helps on fresh code where retrieval
finds nothing.  Memory is bounded by the vocabulary actually seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .draft_tree import Draft


class TokenRecycler:
    name = "recycle"

    def __init__(self, top_k: int = 4, depth: int = 4, breadth: Sequence[int] = (3, 2, 1, 1)) -> None:
        self.top_k = top_k
        self.depth = depth
        self.breadth = tuple(breadth)
        self._next: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self._next)

    def observe(self, tokens: Sequence[int], logits: torch.Tensor) -> None:
        """Remember the top-k predictions after each of ``tokens`` (rows of ``logits``)."""
        top = logits.topk(self.top_k, dim=-1).indices.tolist()
        for token, successors in zip(tokens, top):
            self._next[token] = successors

    def drafts(self, context: Sequence[int]) -> list[Draft]:
        """Chains grown from the last token along remembered successors, best first."""
        if not context:
            return []
        drafts: list[Draft] = []

        def grow(prefix: tuple[int, ...], weight: float) -> None:
            depth = len(prefix)
            successors = self._next.get(prefix[-1] if prefix else context[-1])
            if depth >= self.depth or not successors:
                if prefix:
                    drafts.append(Draft(prefix, weight, self.name))
                return
            for rank, token in enumerate(successors[: self.breadth[min(depth, len(self.breadth) - 1)]]):
                grow(prefix + (token,), weight / (rank + 1))

        grow((), 1.0)
        return drafts
