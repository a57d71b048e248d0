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


CHUNK = 1024
"""Columns per block in ``top_indices``' first stage."""


def top_indices(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of each row's ``k`` largest values [rows, k], best first: the values of
    ``logits.topk(k)``, an index of another column holding the same value where there are ties.

    In two stages: the maximum of every block of ``CHUNK`` columns, then a top-k over the
    columns of the ``k`` blocks with the largest maxima (a column among the ``k`` largest lies
    in one of them: otherwise ``k`` blocks hold a larger value each).  ``topk`` over the
    default model's 151,936 logits took 0.5 ms for 3 rows on the AMX Xeon, and a pass ranks
    two such batches; the two stages took a quarter of that."""
    rows, columns = logits.shape
    blocks = columns // CHUNK
    if blocks <= 2 * k:  # the first stage would leave half the columns or more
        return logits.topk(k, dim=-1).indices
    body = logits[:, : blocks * CHUNK].view(rows, blocks, CHUNK)
    best = body.amax(dim=-1).topk(k, dim=-1).indices  # [rows, k]
    picked = body[torch.arange(rows, device=logits.device)[:, None], best].flatten(1)  # [rows, k * CHUNK]
    offsets = torch.arange(CHUNK, device=logits.device)
    where = (best[..., None] * CHUNK + offsets).flatten(1)
    tail = logits[:, blocks * CHUNK :]
    if tail.shape[1]:
        picked = torch.cat([picked, tail], dim=1)
        where = torch.cat([where, torch.arange(blocks * CHUNK, columns, device=logits.device).expand(rows, -1)], dim=1)
    return where.gather(1, picked.topk(k, dim=-1).indices)


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
        """Remember the top-k predictions after each of ``tokens`` (rows of ``logits``); where a
        token appears twice, its last row wins."""
        top = top_indices(logits, self.top_k).tolist()
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
