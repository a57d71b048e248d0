"""Int8-weight linear layers (``engine.int8_linear``): close to the float layer, applied only where safe."""

from __future__ import annotations

import torch

from lsp_server.engine import int8_linear
from lsp_server.engine.int8_linear import Int8Linear, quantize_linears


def test_int8_product_is_close_to_the_float_one():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        linear = torch.nn.Linear(96, 40).to(dtype)
        x = torch.randn(2, 3, 96, dtype=dtype)
        exact = linear(x).float()
        approx = Int8Linear(linear)(x).float()
        assert approx.shape == exact.shape
        assert (approx - exact).abs().max() <= 0.02 * exact.abs().max()


def test_only_aligned_cpu_layers_are_replaced():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5, bias=False),
                                torch.nn.Linear(5, 7))
    assert quantize_linears(model) == 2
    assert [type(layer).__name__ for layer in model] == ["Int8Linear", "ReLU", "Int8Linear", "Linear"]
    assert model(torch.randn(4, 64)).shape == (4, 7)
    assert quantize_linears(model) == 0  # nothing left to replace


def test_a_build_without_the_kernel_keeps_float_layers(monkeypatch):
    assert int8_linear.kernel_available()  # this project's pinned torch has it
    monkeypatch.setattr(int8_linear, "kernel_available", lambda: False)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    assert quantize_linears(model) == 0 and type(model[0]) is torch.nn.Linear
