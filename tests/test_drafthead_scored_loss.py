"""The draft head's chunked training loss equals the plain cross-entropy, value and gradient."""

import pytest
import torch

from lsp_server.drafthead.scored_loss import scored_cross_entropy


def _plain(predicted: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(predicted @ rows.T, targets, ignore_index=-1)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_value_and_gradient_equal_the_plain_form_in_float32(chunk):
    generator = torch.Generator().manual_seed(chunk)
    rows = torch.randn(300, 24, generator=generator)
    targets = torch.randint(0, 300, (50,), generator=generator)
    targets[::3] = -1  # not scored
    predicted = torch.randn(50, 24, generator=generator, requires_grad=True)
    expected = _plain(predicted, rows, targets)
    (expected_gradient,) = torch.autograd.grad(expected * 2.5, predicted)
    loss = scored_cross_entropy(predicted, rows, targets, chunk)
    (gradient,) = torch.autograd.grad(loss * 2.5, predicted)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-5, atol=1e-7)


def test_bfloat16_rows_match_autocast_of_the_plain_form():
    """The arithmetic training ran before: products in bf16 under autocast, softmax in float32."""
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(512, 64, generator=generator)
    targets = torch.randint(0, 512, (40,), generator=generator)
    predicted = torch.randn(40, 64, generator=generator, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torch.nn.functional.cross_entropy((predicted @ rows.T).float(), targets)
    (expected_gradient,) = torch.autograd.grad(expected, predicted)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the training loop calls it
        loss = scored_cross_entropy(predicted, rows.bfloat16(), targets, 16)
    (gradient,) = torch.autograd.grad(loss, predicted)
    assert gradient.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gradient, expected_gradient, rtol=0.02, atol=2e-4)


def test_nothing_scored_is_a_zero_loss_without_gradient():
    predicted = torch.randn(5, 8, requires_grad=True)
    loss = scored_cross_entropy(predicted, torch.randn(10, 8), torch.full((5,), -1))
    loss.backward()
    assert loss.item() == 0.0 and not predicted.grad.any()
