"""Verify a draft tree in one forward pass and keep only what the model agrees with.

The pass feeds the *pending* tokens (not yet in the KV cache; the last one is the tree's
root) followed by every tree node.  A 4D attention mask lets each node see the cache,
the pending tokens and its own ancestors only, and position ids put each node at its
depth, so every node's hidden state is exactly what sequential decoding of its path
would produce.  Greedy acceptance then walks from the root: the model's argmax at the
current node is accepted, and if a child carries that token the walk moves there.  The
output is therefore the greedy output, token for token; the tree only decides how many
tokens one pass yields.  Logits are computed in one product for the root, the most probable
chain and every node the walk is likely to reach, and for other nodes only if the accepted
path reaches them: the LM head is the widest matrix of a small model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ..kv_cache import forward_with_cache
from ..linear import tree_rows_apart
from ..screened_argmax import FullRows, Picks, ScreenedArgmax
from .draft_tree import DraftTree

ROW_WORTH = 0.08
"""A node's logits go into the pass's one LM-head product when its estimated acceptance
probability (recalibrated to observed acceptance by the drafter) is at least this.  The
product is bound by reading the matrix: on this CPU (default model, bf16) 1 row takes
3.8 ms, 4 rows 4.4, 8 rows 5.6, so a row costs about 0.29 ms inside the product and 3.8 ms
on its own, and it pays to include a node whose row is needed (the walk reaches it) more
than 0.29 / 3.8 = 8% of the time."""


@dataclass
class Verified:
    accepted: list[int]
    """Tokens accepted this pass: the matched draft path plus the model's next token."""
    hidden: torch.Tensor
    """[len(accepted), hidden]: row j is the state from which ``accepted[j]`` was predicted."""
    path: list[int]
    """Tree node indices of the matched draft path."""
    logits: torch.Tensor
    """[len(accepted), vocab]: the logits that chose each accepted token (where the LM head was
    screened, ``screened_argmax``, the screen's float32 estimates: they rank the likeliest
    tokens, as Token Recycling needs, and the accepted tokens themselves are exact)."""
    fed_states: torch.Tensor | None = None
    """[len(pending) - 1, hidden]: the states of the pending tokens before the last (a prompt's
    pass), row j the state the pending token ``j + 1`` was chosen from; what the draft head reads."""
    off_path: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    """Tree nodes off the accepted path whose logits the pass computed anyway: (the node's token,
    its logits [vocab]), what the model would write after that token there."""


def tree_attention_mask(past: int, pending: int, tree: DraftTree, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [1, 1, pending + n, past + pending + n]: 0 where attention is allowed."""
    n = len(tree)
    allowed = torch.zeros(pending + n, past + pending + n, dtype=torch.bool)
    allowed[:, :past] = True
    allowed[:pending, past : past + pending] = torch.ones(pending, pending, dtype=torch.bool).tril()
    allowed[pending:, past : past + pending] = True
    if n:
        allowed[pending:, past + pending :] = tree.ancestor_mask()
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def tree_position_ids(past: int, pending: int, tree: DraftTree) -> list[int]:
    root = past + pending - 1
    return list(range(past, past + pending)) + [root + depth for depth in tree.depths]


def keep_cache_positions(cache: DynamicCache, start: int, offsets: list[int]) -> None:
    """Keep cache positions ``[:start]`` and ``start + offsets``; drop the rest.

    The kept tree entries are moved down in place (the cache is this decoding's own), so
    the long prefix is not copied: 0.3 instead of 1.8 ms per pass at 2k positions here.
    """
    end = start + len(offsets)
    moved = offsets != list(range(len(offsets)))
    index: torch.Tensor | None = None
    for layer in cache.layers:
        if layer.keys is None:
            continue
        if moved:
            if index is None:
                index = torch.tensor(offsets, device=layer.keys.device) + start
            layer.keys[:, :, start:end] = layer.keys.index_select(2, index)
            layer.values[:, :, start:end] = layer.values.index_select(2, index)
        layer.keys = layer.keys[:, :, :end]
        layer.values = layer.values[:, :, :end]


class TreeVerifier:
    """Runs verification passes for one model."""

    def __init__(self, body: torch.nn.Module, head: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 screen: ScreenedArgmax | None = None) -> None:
        """``screen``: picks greedy tokens without reading the whole LM head (``screened_argmax``)."""
        self.body = body
        self.head = head
        self.device = device
        self.dtype = dtype
        self.screen = screen

    @torch.inference_mode()
    def __call__(self, cache: DynamicCache, pending: list[int], tree: DraftTree) -> Verified:
        past = cache.get_seq_length()
        ids = torch.tensor([pending + tree.tokens], device=self.device)
        kwargs = {}
        if len(tree):
            positions = tree_position_ids(past, len(pending), tree)
            kwargs["position_ids"] = torch.tensor([positions], device=self.device)
            kwargs["attention_mask"] = tree_attention_mask(past, len(pending), tree, self.dtype).to(self.device)
        with tree_rows_apart(len(tree)):  # on a prompt's pass, the tree's rows get their decoding bits
            out = forward_with_cache(self.body, cache, input_ids=ids, **kwargs)
        states = out.last_hidden_state[0, len(pending) - 1 :]  # row 0: root, row i + 1: node i
        children: dict[int, dict[int, int]] = {}
        for index, parent in enumerate(tree.parents):
            children.setdefault(parent, {})[tree.tokens[index]] = index
        picked = self._greedy(states, self._likely_rows(tree, children))
        node, rows, accepted, path, logits = -1, [0], [], [], []
        while True:
            row = rows[-1]
            if row not in picked:
                picked.update(self._greedy(states, [row]))
            batch, index = picked[row]
            logits.append(batch.logits[index])
            token = batch.token(index)
            accepted.append(token)
            child = children.get(node, {}).get(token)
            if child is None:
                break
            path.append(child)
            rows.append(child + 1)
            node = child
        keep_cache_positions(cache, past + len(pending), path)
        fed = out.last_hidden_state[0, : len(pending) - 1]
        on_path = set(rows)
        off_path = [(tree.tokens[row - 1], batch.logits[index]) for row, (batch, index) in picked.items()
                    if row not in on_path]
        return Verified(accepted, states[rows], path, torch.stack(logits), fed, off_path)

    def _greedy(self, states: torch.Tensor, rows: list[int]) -> dict[int, tuple[Picks, int]]:
        """One LM-head product (or one screen) over ``rows`` of ``states``: per row, its batch and index."""
        batch = self.screen(states[rows]) if self.screen is not None else FullRows(self.head(states[rows]))
        return {row: (batch, index) for index, row in enumerate(rows)}

    @staticmethod
    def _likely_rows(tree: DraftTree, children: dict[int, dict[int, int]]) -> list[int]:
        """The root, the tree's most probable chain and every node at least ``ROW_WORTH``
        likely to be accepted: the rows whose logits one product computes up front.

        The LM head is memory-bound for a few rows: one product over several rows costs
        about what one row does, where a call per accepted token would read the whole
        vocabulary matrix each time.  Other rows are computed on demand if the walk
        reaches them (on HumanEval, before the likely siblings were added, the walk left
        the chain in 24% of passes and paid a separate product each time).
        """
        rows, node = [0], -1
        while children.get(node):
            node = max(children[node].values(), key=lambda child: tree.probabilities[child])
            rows.append(node + 1)
        chain = set(rows)
        return rows + [index + 1 for index, p in enumerate(tree.probabilities) if p >= ROW_WORTH and index + 1 not in chain]
