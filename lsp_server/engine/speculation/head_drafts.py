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


DEEP_VOCAB = 4096
"""The head's guesses below its first level are scored against only its most frequent
tokens: scoring reads a ``vocab x hidden`` matrix from memory on every level (29 MB for the
default model's 16,384 tokens in bf16), which the verification pass has pushed out of the
CPU caches by then.  On the current head's held-out generations, its second and third
guesses (given the earlier ones right) were the model's pick 45.4% / 42.0% of the time
against all 16,384 tokens and 45.0% / 41.9% against the 4,096 most frequent; the first
guess would lose 1.3 points, so it keeps the whole vocabulary.  (A head's vocabulary is
stored most frequent first: ``drafthead.train.frequent_vocab``.)"""


class HeadProposer:
    """The head bound to one loaded model: (hidden state, pending token) -> likely next tokens."""

    name = "head"

    def __init__(self, head: DraftHead, embedding: torch.nn.Module, lm_head: torch.nn.Module,
                 breadth: tuple[int, ...] = (4,) + (2,) * (DRAFT_LEVELS - 1), expand: int = 2) -> None:
        weight = embedding.weight
        self.embedding = weight
        rows = score_rows(lm_head, head.vocab, head.hidden_size)
        self.scores = self._scoring(rows.to(weight.dtype))
        # A head that knows no more tokens than that scores every level with the same layer.
        self.deep_scores = self.scores if len(rows) <= DEEP_VOCAB else self._scoring(
            rows[:DEEP_VOCAB].to(weight.dtype))
        self.head = head.to(device=weight.device, dtype=weight.dtype)
        self.vocab: list[int] = head.vocab.tolist()
        self.breadth = breadth
        self.expand = expand
        if weight.device.type == "cpu":
            install_row_invariant(torch.nn.ModuleList([self.head, self.scores, self.deep_scores]))  # modules() dedupes

    @staticmethod
    def _scoring(rows: torch.Tensor) -> torch.nn.Linear:
        """A bias-free linear layer whose output rows are the given LM-head rows."""
        scoring = torch.nn.Linear(rows.shape[1], rows.shape[0], bias=False, device=rows.device, dtype=rows.dtype)
        scoring.weight = torch.nn.Parameter(rows, requires_grad=False)
        return scoring

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
        for level, width in enumerate(self.breadth):
            predicted = self.head(states, self.embedding[tokens])
            scores = self.scores if level == 0 else self.deep_scores
            top = torch.softmax(scores(predicted).float(), dim=-1).topk(width)
            children = [(HeadNode((*parent.path, self.vocab[index]), parent.joint * p, p), row)
                        for row, parent in enumerate(frontier)
                        for index, p in zip(top.indices[row].tolist(), top.values[row].tolist())]
            nodes += [node for node, _ in children]
            children = sorted(children, key=lambda item: -item[0].joint)[: self.expand]
            frontier = [node for node, _ in children]
            states = predicted[[row for _, row in children]]
            tokens = [node.path[-1] for node in frontier]
        return nodes
