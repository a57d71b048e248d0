"""The token tree that one verification pass checks.

Drafts (token sequences that might come next) are merged into a trie; every trie node
gets an estimated probability that the model accepts it, and the best ``n`` nodes are
flattened into arrays: token, parent index and depth per node.  Because a node's
probability never exceeds its parent's (its drafts are a subset of the parent's, each
worth less one token deeper), the top ``n`` by probability always form a tree: every
chosen node's parent is chosen too.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch


class Draft(NamedTuple):
    """One guess of the tokens that come next, from one source."""

    tokens: tuple[int, ...]
    weight: float
    """A source's raw weight (e.g. a count); after calibration, the probability that the
    model's next token is this draft's first."""
    source: str
    match: int = 0
    """How many trailing context tokens the source matched (0: not a suffix match)."""
    continuation: float = 0.8
    """The chance that each further token is right, given the ones before it were."""
    masses: tuple[float, ...] = ()
    """When given, the mass the draft puts on each of its tokens, instead of ``weight`` and
    ``continuation``: for a source that ranks a whole tree of its own (the draft head)."""


@dataclass
class _TrieNode:
    token: int
    mass: float = 0.0
    sources: set[str] = field(default_factory=set)
    children: dict[int, "_TrieNode"] = field(default_factory=dict)


@dataclass(frozen=True)
class DraftTree:
    """A flattened token tree; node ``i``'s parent is ``parents[i]`` (-1: the root).

    The root itself is not a node: it is the last token that the model already has
    (or is being fed), and depth-1 nodes are guesses for the token after it.
    """

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    probabilities: list[float]
    sources: list[frozenset[str]]

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def empty(cls) -> DraftTree:
        return cls([], [], [], [], [])

    def prefix(self, n: int) -> DraftTree:
        """The first ``n`` nodes: still a tree, because parents come before children."""
        return DraftTree(self.tokens[:n], self.parents[:n], self.depths[:n], self.probabilities[:n], self.sources[:n])

    def reranked(self, probabilities: Sequence[float]) -> tuple[DraftTree, list[int]]:
        """The tree with new node probabilities, most probable first, and the old index of
        each node in the new order.  Each probability is capped at its parent's (a node is
        only accepted with its parent), so sorting keeps parents before children (on a tie
        the shallower node goes first) and every prefix is still a tree."""
        capped: list[float] = []
        for node, probability in enumerate(probabilities):
            parent = self.parents[node]
            capped.append(probability if parent == -1 else min(probability, capped[parent]))
        order = sorted(range(len(capped)), key=lambda node: (-capped[node], self.depths[node], node))
        new_index = {old: new for new, old in enumerate(order)}
        tree = DraftTree([self.tokens[old] for old in order],
                         [-1 if self.parents[old] == -1 else new_index[self.parents[old]] for old in order],
                         [self.depths[old] for old in order], [capped[old] for old in order],
                         [self.sources[old] for old in order])
        return tree, order

    def outcomes(self, accepted: Sequence[int]) -> list[bool | None]:
        """Per node, whether the model would accept it, given the tokens it chose in a pass
        over (a prefix of) this tree: ``accepted``, the accepted drafts and the model's
        next token.  Greedy decoding is deterministic, so a node on the chosen tokens is
        accepted whether or not it was verified; None where the tree goes deeper than they do."""
        outcomes: list[bool | None] = []
        for node, parent in enumerate(self.parents):
            on_path = True if parent == -1 else outcomes[parent]
            depth = self.depths[node]
            if on_path is None or (on_path and depth > len(accepted)):
                outcomes.append(None)
            else:
                outcomes.append(on_path and self.tokens[node] == accepted[depth - 1])
        return outcomes

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root's child down to ``node``."""
        path = []
        while node != -1:
            path.append(node)
            node = self.parents[node]
        return path[::-1]

    def ancestor_mask(self) -> torch.Tensor:
        """Bool [n, n]: entry (i, j) is True when node j is node i or one of its ancestors."""
        n = len(self.tokens)
        mask = torch.eye(n, dtype=torch.bool)
        for i, parent in enumerate(self.parents):
            if parent != -1:
                mask[i] |= mask[parent]  # parents always come before their children
        return mask


def build_tree(drafts: Iterable[Draft], max_nodes: int) -> DraftTree:
    """Merge calibrated drafts into a trie and keep the ``max_nodes`` most probable nodes.

    A draft puts ``weight`` on its first token and ``weight * continuation ** d`` on its
    token ``d`` deeper (or its own ``masses``): how likely the model is to follow it that far.  A node's
    probability is the mass of all drafts through it, capped at 1, so a guess that several
    drafts agree on ranks high, a long match's draft reaches deep, and a child never
    outranks its parent.  Nodes come out parents-first.
    """
    root = _TrieNode(token=-1)
    for draft in drafts:
        node, mass = root, draft.weight
        for depth, token in enumerate(draft.tokens):
            node = node.children.setdefault(token, _TrieNode(token))
            node.mass += draft.masses[depth] if draft.masses else mass
            node.sources.add(draft.source)
            mass *= draft.continuation
    if max_nodes <= 0 or not root.children:
        return DraftTree.empty()
    order = itertools.count()
    heap: list[tuple[float, int, _TrieNode, int, int]] = []
    for child in root.children.values():
        heapq.heappush(heap, (-min(1.0, child.mass), next(order), child, -1, 1))
    tree = DraftTree([], [], [], [], [])
    while heap and len(tree.tokens) < max_nodes:
        negative_p, _, node, parent, depth = heapq.heappop(heap)
        index = len(tree.tokens)
        tree.tokens.append(node.token)
        tree.parents.append(parent)
        tree.depths.append(depth)
        tree.probabilities.append(-negative_p)
        tree.sources.append(frozenset(node.sources))
        for child in node.children.values():
            heapq.heappush(heap, (-min(1.0, child.mass), next(order), child, index, depth + 1))
    return tree
