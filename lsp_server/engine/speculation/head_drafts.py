"""Drafts from the learned draft head (``lsp_server.drafthead``) at decode time.

The head guesses the token after the model's pending token from the pass's last hidden
state, then, unrolled on the states it predicts itself, the tokens after that: a small
tree of guesses.  Its attention reads the positions before (``extend`` adds the true
states and tokens after every pass; their keys and values are computed once and kept for
the last ``context`` positions, and across requests for the prefix a new prompt shares
with the last: ``begin``), and a guess below the first level also reads the guesses
above it on its own path, as in training (``drafthead.head.unrolled_mask``).  Token
Recycling's adjacency continues its deepest guesses.  The head runs in the model's dtype
with the model's own embedding and LM-head rows (recovered once at load), so it adds no
weights beyond its small block; on a CPU its layers are packed for oneDNN like the
model's (``engine.linear``): a one-row product on an unpacked bf16 weight reorders the
whole weight on every call.  Better still, its weights are int8 there (``engine.int8_linear``):
its guesses need not be exact, and reading its weights is most of its time.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ...drafthead import DRAFT_LEVELS
from ...drafthead.head import DraftHead, score_rows
from ..int8_linear import quantize_linears
from ..kv_reuse import common_prefix_length
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


RETAIN = 2
"""Positions are kept for this many times the head's context: a new request keeps those
before its first changed token, and the last request's output (after the prompt it was
typed into) must not have pushed them all out."""

UNKNOWN = -1
"""A position's token where the head was never told it (nothing agrees with it)."""


class HeadProposer:
    """The head bound to one loaded model: the positions decided so far -> likely next tokens."""

    name = "head"

    def __init__(self, head: DraftHead, embedding: torch.nn.Module, lm_head: torch.nn.Module,
                 breadth: tuple[int, ...] = (4,) + (2,) * (DRAFT_LEVELS - 1), expand: int = 2,
                 int8: bool = True) -> None:
        """``int8``: on a CPU, the head's layers and score rows keep int8 weights (``engine.int8_linear``)."""
        weight = embedding.weight
        self.embedding = weight
        rows = score_rows(lm_head, head.vocab, head.hidden_size).to(weight.dtype)
        self.head = copy.deepcopy(head).to(device=weight.device, dtype=weight.dtype)  # the caller's stays as it is
        self.vocab: list[int] = head.vocab.tolist()
        self.breadth = breadth
        self.expand = expand
        # A head that knows no more tokens than that scores every level with the same layer.
        layers = torch.nn.ModuleList([self.head, self._scoring(rows)] + (
            [self._scoring(rows[:DEEP_VOCAB])] if len(rows) > DEEP_VOCAB else []))
        if weight.device.type == "cpu":
            if int8:
                quantize_linears(layers)
            install_row_invariant(layers)  # what int8 left
        self.scores, self.deep_scores = layers[1], layers[-1]
        self.reset()

    @staticmethod
    def _scoring(rows: torch.Tensor) -> torch.nn.Linear:
        """A bias-free linear layer whose output rows are the given LM-head rows."""
        scoring = torch.nn.Linear(rows.shape[1], rows.shape[0], bias=False, device=rows.device, dtype=rows.dtype)
        scoring.weight = torch.nn.Parameter(rows, requires_grad=False)
        return scoring

    def reset(self) -> None:
        """Forget every position read."""
        self._prompt: list[int] = []
        """The request's prompt (``begin``)."""
        self._ids: list[int] = []
        """The tokens at positions 0, 1, ... up to the last one read; ``UNKNOWN`` where never told."""
        self._states: torch.Tensor | None = None
        """[held, hidden]: for each of the last positions kept (``RETAIN`` times the context; the
        attention reads the last ``context``), the state its token was chosen from."""
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self._root: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def begin(self, prompt: Sequence[int]) -> None:
        """A new request: keep what was read of the positions the prompt still agrees on.

        A position's entry depends only on the tokens up to it, so the entries of the prefix the
        prompt shares with what was read last still hold, and so does the state of the first
        position that differs (it was chosen from agreed tokens alone), which is read again with
        the prompt's token.  While the user types, the model reuses its keys and values of that
        prefix (``kv_reuse``) and feeds only what follows; without this the head would see only
        those few positions.  When the prompt's last position is read here, ``tree`` drafts for
        the prompt's own pass too.
        """
        self._prompt = list(prompt)
        if not prompt:
            self.reset()
            return
        keep = min(common_prefix_length(self._ids, prompt), len(prompt) - 1)
        state = self._state_at(keep)
        self._crop(keep)
        if state is not None:
            self.extend(state, [prompt[keep]], keep)
        if len(self._ids) != len(prompt):
            self._root = None

    @property
    def held(self) -> int:
        """How many of the last positions read are kept."""
        return 0 if self._states is None else len(self._states)

    def _seen(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of the positions the attention reads: the last ``context`` held."""
        context = self.head.context
        return self._keys[:, -context:], self._values[:, -context:]  # type: ignore[index]

    def _state_at(self, position: int) -> torch.Tensor | None:
        """The kept state the token at ``position`` was chosen from, [1, hidden], if held."""
        index = position - (len(self._ids) - self.held)
        if self._states is None or not 0 <= index < self.held:
            return None
        return self._states[index : index + 1]

    def _crop(self, length: int) -> None:
        """Forget the positions from ``length`` on."""
        drop = len(self._ids) - length
        if drop <= 0:
            return
        self._ids = self._ids[:length]
        kept = self.held - drop
        if kept <= 0:
            self._states = self._keys = self._values = None
        else:
            self._states = self._states[:kept]  # type: ignore[index]
            if self._keys is not None:
                self._keys, self._values = self._keys[:, :kept], self._values[:, :kept]  # type: ignore[index]
        self._root = None

    @torch.inference_mode()
    def extend(self, states: torch.Tensor, tokens: Sequence[int], start: int | None = None) -> None:
        """Read positions the model has decided: ``tokens`` stand at ``start`` on (default: after
        the last read), row ``j`` of ``states`` is the state the token ``tokens[j]`` was chosen
        from (and is fed next).  What was read from ``start`` on is replaced.  The last row is what
        ``tree`` guesses after."""
        if not len(tokens):
            return
        start = len(self._ids) if start is None else start
        if start > len(self._ids):  # positions never read: no entries, and only the prompt's tokens known
            self._crop(0)
            self._ids = (self._prompt[:start] + [UNKNOWN] * start)[:start]
        self._crop(start)
        self._ids += tokens
        keep = RETAIN * max(1, self.head.context)
        states = states[-keep:].to(self.embedding.dtype)
        tokens = list(tokens)[-keep:]
        fused = self.head.fuse(states, self.embedding[tokens])
        query = None
        if self.head.context:
            positions = torch.arange(len(self._ids) - len(tokens), len(self._ids), device=fused.device)
            query, key, value = self.head.project(fused, positions)
            self._keys = key if self._keys is None else torch.cat([self._keys, key], dim=-2)[:, -keep:]
            self._values = value if self._values is None else torch.cat([self._values, value], dim=-2)[:, -keep:]
            query = query[:, -1:]
        self._states = states if self._states is None else torch.cat([self._states, states])[-keep:]
        self._root = (states[-1:], fused[-1:], query)

    def _attend_path(self, fused: torch.Tensor, level: int, paths: list[tuple[torch.Tensor, torch.Tensor]]
                     ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Attention of one level's guesses [rows, 1, hidden] over the positions read, the guesses
        above each on its path and itself; returns it and the paths with this level's keys added."""
        position = torch.tensor([len(self._ids) - 1 + level], device=fused.device)
        query, key, value = self.head.project(fused, position)
        rows = fused.shape[0]
        seen_keys, seen_values = self._seen()
        keys = torch.cat([seen_keys[None].expand(rows, -1, -1, -1), torch.stack([path[0] for path in paths]), key],
                         dim=-2)
        values = torch.cat([seen_values[None].expand(rows, -1, -1, -1), torch.stack([path[1] for path in paths]),
                            value], dim=-2)
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
            query, *self._seen())
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
