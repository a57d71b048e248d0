"""A single row is padded to the call size timed fastest on this machine, once per machine,
and the padding changes no bits: a row gets what it gets among other rows."""

from __future__ import annotations

import time

import pytest
import torch

from lsp_server.engine.kernel_facts import KernelFacts
from lsp_server.engine.linear import RowInvariantLinear, install_row_invariant
from lsp_server.engine.small_calls import pad_small_calls


class _SlowBut(RowInvariantLinear):
    """A kernel whose calls take 5 ms more unless they have ``fast_rows`` rows (as oneDNN's bf16
    product of two rows was slower than of four on a 2-core AMD EPYC); records the row counts
    it was handed."""

    fast_rows = 4
    calls: list[int] = []

    def _product(self, rows: torch.Tensor) -> torch.Tensor:
        type(self).calls.append(rows.shape[0])
        time.sleep(0.001 if rows.shape[0] == self.fast_rows else 0.006)
        return torch.nn.functional.linear(rows, self.weight, self.bias)


def _layer(fast_rows: int, in_features: int = 16) -> _SlowBut:
    layer = _SlowBut(in_features, 8)
    layer.fast_rows = fast_rows
    return layer


def test_a_kind_fastest_on_four_rows_pads_a_single_row_and_one_fastest_on_two_keeps_two(tmp_path):
    slow, fast = _layer(4), _layer(2, in_features=24)  # equal times would leave the choice to noise
    padded = pad_small_calls([slow, fast, _layer(4)], KernelFacts(tmp_path / "facts.json", "machine A"))
    assert (slow.min_rows, fast.min_rows) == (4, 2)
    assert list(padded.values()) == [4]  # one kind padded (the two slow layers are one kind)
    _SlowBut.calls = []
    row = torch.randn(1, 16)
    assert torch.allclose(slow(row), torch.nn.functional.linear(row, slow.weight, slow.bias), atol=1e-6)
    assert _SlowBut.calls == [4]


def test_the_timing_runs_once_per_machine(tmp_path):
    path = tmp_path / "facts.json"
    pad_small_calls([_layer(4)], KernelFacts(path, "machine A"))
    _SlowBut.calls = []
    layer = _layer(4)
    pad_small_calls([layer], KernelFacts(path, "machine A"))
    assert _SlowBut.calls == [] and layer.min_rows == 4  # read, not timed
    pad_small_calls([_layer(4)], KernelFacts(path, "machine B"))
    assert _SlowBut.calls


@pytest.mark.parametrize("min_rows", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_padded_row_gets_the_bits_it_gets_among_others(min_rows, dtype):
    torch.manual_seed(0)
    layer = torch.nn.Linear(4864, 896, bias=False).to(dtype)
    kernel = install_row_invariant(torch.nn.Sequential(layer)).split()[0]
    if kernel == "plain" and dtype == torch.float32:
        pytest.skip("MKL's unpacked fp32 product varies with the row count: fp32 is bit-exact only packed")
    layer.min_rows = min_rows
    rows = torch.randn(40, 4864).to(dtype)
    with torch.inference_mode():
        together = layer(rows)
        for index in range(8):
            assert torch.equal(layer(rows[index : index + 1]), together[index : index + 1])
        for size in (2, 3):
            assert torch.equal(layer(rows[5 : 5 + size]), together[5 : 5 + size])
        assert layer(rows[:0]).shape == (0, 896)  # nothing to pad
