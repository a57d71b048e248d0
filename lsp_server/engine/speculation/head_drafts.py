"""Drafts from the learned draft head (``lsp_server.drafthead``) at decode time.

The head guesses the token after the model's pending token from the pass's last hidden
state, then, unrolled on the states it predicts itself, the tokens after that: a small
tree of guesses.  Its attention reads the positions before (``extend`` adds the true
states and tokens after every pass; their keys and values are computed once and kept for
the last ``context`` positions), and a guess below the first level also reads the guesses
above it on its own path, as in training (``drafthead.head.unrolled_mask``).  Token
Recycling's adjacency continues its deepest guesses.  The head runs in the model's dtype
with the model's own embedding and LM-head rows (recovered once at load), so it adds no
weights beyond its small block; on a CPU its layers are packed for oneDNN like the
model's (``engine.linear``): a one-row product on an unpacked bf16 weight reorders the
whole weight on every call.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """The head bound to one loaded model: the positions decided so far -> likely next tokens."""

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
        self.reset()

    @staticmethod
    def _scoring(rows: torch.Tensor) -> torch.nn.Linear:
        """A bias-free linear layer whose output rows are the given LM-head rows."""
        scoring = torch.nn.Linear(rows.shape[1], rows.shape[0], bias=False, device=rows.device, dtype=rows.dtype)
        scoring.weight = torch.nn.Parameter(rows, requires_grad=False)
        return scoring

    def reset(self) -> None:
        """Forget the positions read so far (a new request)."""
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self._next_position = 0
        self._root: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    @torch.inference_mode()
    def extend(self, states: torch.Tensor, tokens: Sequence[int]) -> None:
        """Read positions the model has decided: row ``j`` of ``states`` is the state the token
        ``tokens[j]`` was chosen from (and is fed next).  The last row is what ``tree`` guesses after."""
        if not len(tokens):
            return
        keep = max(1, self.head.context)
        states = states[-keep:].to(self.embedding.dtype)
        tokens = list(tokens)[-keep:]
        fused = self.head.fuse(states, self.embedding[tokens])
        query = None
        if self.head.context:
            positions = torch.arange(self._next_position, self._next_position + len(tokens), device=fused.device)
            query, key, value = self.head.project(fused, positions)
            self._keys = key if self._keys is None else torch.cat([self._keys, key], dim=-2)[:, -keep:]
            self._values = value if self._values is None else torch.cat([self._values, value], dim=-2)[:, -keep:]
            query = query[:, -1:]
        self._next_position += len(tokens)
        self._root = (states[-1:], fused[-1:], query)

    def _attend_path(self, fused: torch.Tensor, level: int, paths: list[tuple[torch.Tensor, torch.Tensor]]
                     ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Attention of one level's guesses [rows, 1, hidden] over the positions read, the guesses
        above each on its path and itself; returns it and the paths with this level's keys added."""
        position = torch.tensor([self._next_position - 1 + level], device=fused.device)
        query, key, value = self.head.project(fused, position)
        rows = fused.shape[0]
        keys = torch.cat([self._keys[None].expand(rows, -1, -1, -1),  # type: ignore[index]
                          torch.stack([path[0] for path in paths]), key], dim=-2)
        values = torch.cat([self._values[None].expand(rows, -1, -1, -1),  # type: ignore[index]
                            torch.stack([path[1] for path in paths]), value], dim=-2)
        attended = torch.nn.functional.scaled_dot_product_attention(query, keys, values)
        return attended, [(torch.cat([keys_, key[row]], dim=-2), torch.cat([values_, value[row]], dim=-2))
                          for row, (keys_, values_) in enumerate(paths)]

    @torch.inference_mode()
    def tree(self) -> list[HeadNode]:
        """Guesses for the next tokens after the last position read, level by level, parents first.

        Level one holds the head's ``breadth[0]`` best tokens; each further level expands the
        ``expand`` likeliest nodes of the level above, starting from the state the head
        predicted for them (it was trained unrolled that way), by ``breadth[d]`` children each.
        """
        if self._root is None:
            return []
        hidden, fused, query = self._root
        attended = None if query is None else torch.nn.functional.scaled_dot_product_attention(
            query, self._keys, self._values)
        predicted = self.head.finish(hidden, fused, attended)
        nodes: list[HeadNode] = []
        frontier = [HeadNode((), 1.0, 1.0)]
        paths: list[tuple[torch.Tensor, torch.Tensor]] = []
        """Per frontier node, the keys and values of the guesses above it from level two on."""
        for level, width in enumerate(self.breadth):
            if level:
                inputs = predicted[:, None]
                fused = self.head.fuse(inputs, self.embedding[[node.path[-1] for node in frontier]][:, None])
                if self.head.context:
                    attended, paths = self._attend_path(fused, level, paths)
                predicted = self.head.finish(inputs, fused, attended)[:, 0]
            scores = self.scores if level == 0 else self.deep_scores
            top = torch.softmax(scores(predicted).float(), dim=-1).topk(width)
            children = [(HeadNode((*parent.path, self.vocab[index]), parent.joint * p, p), row)
                        for row, parent in enumerate(frontier)
                        for index, p in zip(top.indices[row].tolist(), top.values[row].tolist())]
            nodes += [node for node, _ in children]
            children = sorted(children, key=lambda item: -item[0].joint)[: self.expand]
            frontier = [node for node, _ in children]
            rows = [row for _, row in children]
            predicted = predicted[rows]
            if self.head.context:
                empty = (self._keys[:, :0], self._values[:, :0])  # type: ignore[index]
                paths = [paths[row] if level else empty for row in rows]
        return nodes
