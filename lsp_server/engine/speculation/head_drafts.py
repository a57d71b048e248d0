"""Drafts from the learned draft head (``lsp_server.drafthead``) at decode time.

The head guesses the token after the model's pending token from the pass's last hidden
state, then, unrolled on the states it predicts itself, the tokens after that: a small
tree of guesses.  Token Recycling's adjacency continues its deepest guesses.  The head runs in the
model's dtype with the model's own embedding and LM-head rows (recovered once at load),
so it adds no weights beyond its small MLP; on a CPU its layers are packed for oneDNN
like the model's (``engine.linear``): a one-row product on an unpacked bf16 weight
reorders the whole weight on every call.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...drafthead import DRAFT_LEVELS
from ...drafthead.head import DraftHead, score_rows
from ..linear import install_row_invariant


class HeadNode(NamedTuple):
    path: tuple[int, ...]
    """The guessed tokens from the first up to this node."""
    joint: float
    """The head's probability of the whole path."""
    conditional: float
    """The head's probability of the last token, given the path before it."""


class HeadProposer:
    """The head bound to one loaded model: (hidden state, pending token) -> likely next tokens."""

    name = "head"

    def __init__(self, head: DraftHead, embedding: torch.nn.Module, lm_head: torch.nn.Module,
                 breadth: tuple[int, ...] = (4,) + (2,) * (DRAFT_LEVELS - 1), expand: int = 2) -> None:
        weight = embedding.weight
        self.embedding = weight
        rows = score_rows(lm_head, head.vocab, head.hidden_size)
        self.scores = torch.nn.Linear(head.hidden_size, len(rows), bias=False, device=weight.device, dtype=weight.dtype)
        self.scores.weight = torch.nn.Parameter(rows.to(weight.dtype), requires_grad=False)
        self.head = head.to(device=weight.device, dtype=weight.dtype)
        self.vocab: list[int] = head.vocab.tolist()
        self.breadth = breadth
        self.expand = expand
        if weight.device.type == "cpu":
            install_row_invariant(torch.nn.ModuleList([self.head, self.scores]))

    @torch.inference_mode()
    def tree(self, hidden: torch.Tensor, token: int) -> list[HeadNode]:
        """Guesses for the next tokens after ``token``, level by level, parents first.

        Level one holds the head's ``breadth[0]`` best tokens; each further level expands the
        ``expand`` likeliest nodes of the level above, starting from the state the head
        predicted for them (it was trained unrolled that way), by ``breadth[d]`` children each.
        """
        nodes: list[HeadNode] = []
        frontier = [HeadNode((), 1.0, 1.0)]
        states = hidden.reshape(1, -1).to(self.embedding.dtype)
        tokens = [token]
        for width in self.breadth:
            predicted = self.head(states, self.embedding[tokens])
            top = torch.softmax(self.scores(predicted).float(), dim=-1).topk(width)
            level = [(HeadNode((*parent.path, self.vocab[index]), parent.joint * p, p), row)
                     for row, parent in enumerate(frontier)
                     for index, p in zip(top.indices[row].tolist(), top.values[row].tolist())]
            nodes += [node for node, _ in level]
            level = sorted(level, key=lambda item: -item[0].joint)[: self.expand]
            frontier = [node for node, _ in level]
            states = predicted[[row for _, row in level]]
            tokens = [node.path[-1] for node in frontier]
        return nodes
