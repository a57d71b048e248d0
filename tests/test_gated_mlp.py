"""The fused gated MLP: a prompt's rows by oneDNN post-ops, every other row exactly as before."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

from lsp_server.engine import gated_mlp
from lsp_server.engine.linear import PROMPT_ROWS, install_row_invariant, tree_rows_apart

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")


def _mlp(row_limit: int | None, pack: bool = True) -> torch.nn.Module:
    """A small Qwen2 MLP in bf16 on packed layers; ``row_limit`` as ``rows_per_call`` would set
    it on a CPU whose product depends on the call size (AMX)."""
    torch.manual_seed(0)
    mlp = Qwen2MLP(Qwen2Config(hidden_size=64, intermediate_size=192, hidden_act="silu")).to(torch.bfloat16)
    if not install_row_invariant(torch.nn.Sequential(mlp), pack=pack).startswith("packed" if pack else "plain"):
        pytest.skip("this PyTorch build cannot pack bf16 weights")
    for layer in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        layer.max_rows = row_limit
    return mlp


def _unfused(mlp: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
    return mlp.down_proj(mlp.act_fn(mlp.gate_proj(rows)) * mlp.up_proj(rows))


def test_a_prompt_takes_the_fused_products_and_agrees_with_the_model_to_bf16_rounding():
    mlp = _mlp(32)
    prompt = torch.randn(1, PROMPT_ROWS + 40, 64).to(torch.bfloat16)
    with torch.inference_mode():
        unfused = _unfused(mlp, prompt)
        assert gated_mlp.fuse(torch.nn.Sequential(mlp)) == 1
        fused = mlp(prompt)
    assert fused.shape == unfused.shape
    assert not torch.equal(fused, unfused)  # the fused rounding was taken ...
    torch.testing.assert_close(fused.float(), unfused.float(), atol=0.02 * float(unfused.abs().max()), rtol=0.02)
    assert gated_mlp.fuse(torch.nn.Sequential(mlp)) == 0  # ... and is installed once


def test_decoding_rows_and_a_tree_after_a_prompt_keep_their_bits():
    mlp = _mlp(32)
    prompt, tree = torch.randn(PROMPT_ROWS + 40, 64).to(torch.bfloat16), torch.randn(10, 64).to(torch.bfloat16)
    with torch.inference_mode():
        alone = torch.cat([_unfused(mlp, row[None]) for row in tree])
        gated_mlp.fuse(torch.nn.Sequential(mlp))
        prompt_only = mlp(prompt[None])[0]
        assert torch.equal(mlp(tree), alone)  # a decoding pass: unfused, as before
        with tree_rows_apart(len(tree)):  # speculation's first pass: a prompt with a tree after it
            both = mlp(torch.cat([prompt, tree])[None])[0]
    assert torch.equal(both[: len(prompt)], prompt_only)  # the prompt as plain decoding's prefill has it
    assert torch.equal(both[len(prompt):], alone)  # the tree as a decoding pass has it


def test_where_a_row_keeps_its_bits_in_any_call_a_prompt_stays_unfused():
    """Without a row limit a prompt gets the bits of the same tokens in small pieces (a reused
    cache's new tokens): fusing would break that, so it is not done."""
    mlp = _mlp(None)
    prompt = torch.randn(PROMPT_ROWS + 40, 64).to(torch.bfloat16)
    with torch.inference_mode():
        assert gated_mlp.fuse(torch.nn.Sequential(mlp)) == 0
        pieces = torch.cat([mlp(prompt[start : start + 16]) for start in range(0, len(prompt), 16)])
        assert torch.equal(mlp(prompt), pieces)


def test_unpacked_layers_compute_the_models_own_steps():
    mlp = _mlp(32, pack=False)
    prompt = torch.randn(1, PROMPT_ROWS + 40, 64).to(torch.bfloat16)
    with torch.inference_mode():
        unfused = _unfused(mlp, prompt)
        assert gated_mlp.fuse(torch.nn.Sequential(mlp)) == 1
        assert torch.equal(mlp(prompt), unfused)


def test_only_row_invariant_silu_mlps_are_fused():
    stock = Qwen2MLP(Qwen2Config(hidden_size=64, intermediate_size=192, hidden_act="silu"))
    assert gated_mlp.fuse(torch.nn.Sequential(stock)) == 0  # nn.Linear layers: nothing to fuse into
    gelu = _mlp(32)
    gelu.act_fn = torch.nn.GELU()
    assert gated_mlp.fuse(torch.nn.Sequential(gelu)) == 0
    assert not isinstance(gelu, gated_mlp.FusedGatedMLP)


@pytest.mark.parametrize("row_limit", [None, 32])
def test_the_loader_fuses_where_the_projections_have_a_row_limit(tiny_model_dir, monkeypatch, row_limit):
    """The tiny model needs no row limit on this CPU; an AMX machine's probe result is simulated."""
    from lsp_server.engine import linear, load

    if row_limit is not None:
        monkeypatch.setattr(linear, "_saved_limit", lambda _saved: (row_limit, True))
    loaded = load(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    mlps = [module for module in loaded.model.modules() if hasattr(module, "gate_proj")]
    assert mlps and all(mlp.gate_proj.max_rows == row_limit for mlp in mlps)
    assert all(isinstance(mlp, gated_mlp.FusedGatedMLP) == (row_limit is not None) for mlp in mlps)
    assert ("fused MLP" in loaded.kernels) == (row_limit is not None)
