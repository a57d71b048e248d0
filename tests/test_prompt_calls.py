"""A prompt's products run in the call size timed fastest on this machine, once per machine,
and the split changes nothing that exactness depends on: a prompt-only pass and a prompt
with a tree after it give the prompt the same bits, and the tree its decoding bits."""

from __future__ import annotations

import time

import torch

from lsp_server.engine.kernel_facts import KernelFacts
from lsp_server.engine.linear import PROMPT_ROWS, RowInvariantLinear, rows_per_call, tree_rows_apart
from lsp_server.engine.prompt_calls import split_prompts


class _SlowAbove(RowInvariantLinear):
    """A kernel whose calls take 1 ms, and 10 ms more above ``slow_above`` rows, whose calls of
    more than 32 rows give other bits (by call size, as AMX's blocking does); counts its calls."""

    slow_above = 600
    calls = 0

    def _product(self, rows: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        time.sleep(0.011 if rows.shape[0] > self.slow_above else 0.001)
        out = torch.nn.functional.linear(rows, self.weight, self.bias)
        return out + 1e-3 * rows.shape[0] if rows.shape[0] > 32 else out


def _layer(slow_above: int, in_features: int = 16) -> _SlowAbove:
    layer = torch.nn.Linear(in_features, 8)
    layer.__class__ = _SlowAbove
    layer.slow_above = slow_above
    return layer


def test_a_kind_slow_in_big_calls_is_split_and_a_fast_one_is_not(tmp_path):
    slow, fast = _layer(600), _layer(10_000, in_features=24)
    split = split_prompts([slow, fast, _layer(600)], KernelFacts(tmp_path / "facts.json", "machine A"))
    assert slow.prompt_rows == 512 and fast.prompt_rows is None
    assert list(split.values()) == [512]  # one kind split (the two slow layers are one kind)


def test_the_timing_runs_once_per_machine(tmp_path):
    path = tmp_path / "facts.json"
    split_prompts([_layer(600)], KernelFacts(path, "machine A"))
    _SlowAbove.calls = 0
    layer = _layer(600)
    split_prompts([layer], KernelFacts(path, "machine A"))
    assert _SlowAbove.calls == 0 and layer.prompt_rows == 512  # read, not timed
    split_prompts([_layer(600)], KernelFacts(path, "machine B"))
    assert _SlowAbove.calls > 0


def test_a_split_prompt_has_the_same_bits_with_or_without_a_tree_after_it():
    layer = _layer(600)
    rows_per_call([layer])  # 32-row calls for decoding rows
    layer.prompt_rows = 512
    prompt, tree = torch.randn(1100, 16), torch.randn(10, 16)
    alone = torch.cat([layer(row[None]) for row in tree])
    with torch.inference_mode():
        pieces = torch.cat([torch.nn.functional.linear(prompt[start : start + 512], layer.weight, layer.bias)
                            + 1e-3 * len(prompt[start : start + 512]) for start in (0, 512, 1024)])
        assert torch.equal(layer(prompt), pieces)  # 512, 512 and 76 rows
        with tree_rows_apart(len(tree)):
            both = layer(torch.cat([prompt, tree]))
        assert torch.equal(both[: len(prompt)], pieces) and torch.equal(both[len(prompt) :], alone)
        layer.max_rows = None  # a kernel that needs no row limit: the tree goes in one call after the pieces
        with tree_rows_apart(len(tree)):
            assert torch.equal(layer(torch.cat([prompt, tree]))[: len(prompt)], pieces)
        short = prompt[: PROMPT_ROWS]  # not a prompt-sized call: no split
        assert torch.equal(layer(short), torch.nn.functional.linear(short, layer.weight, layer.bias) + 1e-3 * len(short))
