"""A single row is padded to the call size timed fastest on this machine, once per machine,
and the padding changes no bits: a row gets what it gets among other rows."""

from __future__ import annotations

import time

import pytest
import torch

from lsp_server.engine.kernel_facts import KernelFacts
from lsp_server.engine.linear import RowInvariantLinear, install_row_invariant
from lsp_server.engine.small_calls import pad_small_calls


class _SlowBelow(RowInvariantLinear):
    """A kernel whose calls of fewer than ``fast_from`` rows take 5 ms more (as oneDNN's bf16
    product of two rows did on a 2-core AMD EPYC); records the row counts it was handed."""

    fast_from = 4
    calls: list[int] = []

    def _product(self, rows: torch.Tensor) -> torch.Tensor:
        type(self).calls.append(rows.shape[0])
        time.sleep(0.001 if rows.shape[0] >= self.fast_from else 0.006)
        return torch.nn.functional.linear(rows, self.weight, self.bias)


def _layer(fast_from: int, in_features: int = 16) -> _SlowBelow:
    layer = _SlowBelow(in_features, 8)
    layer.fast_from = fast_from
    return layer


def test_a_kind_slow_on_two_rows_pads_a_single_row_and_one_that_is_not_keeps_two(tmp_path):
    slow, fast = _layer(4), _layer(2, in_features=24)
    padded = pad_small_calls([slow, fast, _layer(4)], KernelFacts(tmp_path / "facts.json", "machine A"))
    assert (slow.min_rows, fast.min_rows) == (4, 2)
    assert list(padded.values()) == [4]  # one kind padded (the two slow layers are one kind)
    _SlowBelow.calls = []
    row = torch.randn(1, 16)
    assert torch.allclose(slow(row), torch.nn.functional.linear(row, slow.weight, slow.bias), atol=1e-6)
    assert _SlowBelow.calls == [4]


def test_the_timing_runs_once_per_machine(tmp_path):
    path = tmp_path / "facts.json"
    pad_small_calls([_layer(4)], KernelFacts(path, "machine A"))
    _SlowBelow.calls = []
    layer = _layer(4)
    pad_small_calls([layer], KernelFacts(path, "machine A"))
    assert _SlowBelow.calls == [] and layer.min_rows == 4  # read, not timed
    pad_small_calls([_layer(4)], KernelFacts(path, "machine B"))
    assert _SlowBelow.calls


@pytest.mark.parametrize("min_rows", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_padded_row_gets_the_bits_it_gets_among_others(min_rows, dtype):
    torch.manual_seed(0)
    layer = torch.nn.Linear(4864, 896, bias=False).to(dtype)
    install_row_invariant(torch.nn.Sequential(layer))
    layer.min_rows = min_rows
    rows = torch.randn(40, 4864).to(dtype)
    with torch.inference_mode():
        together = layer(rows)
        for index in range(8):
            assert torch.equal(layer(rows[index : index + 1]), together[index : index + 1])
        for size in (2, 3):
            assert torch.equal(layer(rows[5 : 5 + size]), together[5 : 5 + size])
        assert layer(rows[:0]).shape == (0, 896)  # nothing to pad
