"""A gated MLP's activation and product computed inside its projections' oneDNN calls, for
prompts.

Llama-style MLPs (Qwen2's among them) compute ``down(silu(gate(x)) * up(x))``. On a CPU
the SiLU and the product are two more passes over the widest tensors of the model: in a
profile of a 1,850-token prompt of the default model (2-core AMX Xeon, bf16), the SiLU
took 124 ms and elementwise products 249 ms (64 ms once fused, so the MLP's about 185),
against 805 ms for every linear layer together. oneDNN applies both as post-ops
of the packed product (``linear.PackedLinear``): the gate takes a fused "swish", the up
projection multiplies by the gate's output as it writes its own. A prompt's pass over
the model body, the two toggled in one process, median of 10: 1,850 tokens 1.64 instead
of 1.76 s, 1,300 tokens 1.07 instead of 1.21 s, 700 tokens 0.58 against 0.59 s. Decoding
passes keep the separate operations: with post-ops, oneDNN's product on a few rows was
no faster (a 24-node tree pass at a 1,850-token cache: 103-107 against 102 ms).

So only a prompt's rows (``linear.prompt_rows_in``: the rows that plain decoding's
prefill and speculation's first pass both compute as a prompt) take the fused path; tree
rows riding on that pass, and every decoding pass, are computed as before. And only
where the projections have a row limit per call (``linear.rows_per_call``, as on AMX):
there a long prompt's products already differ in low bits from the same tokens encoded
in small pieces (after a reused cache), and attention takes its stock kernel for such
prompts too. Elsewhere nothing is fused: a prompt keeps the bits of a chunked one, and
reuse those of a fresh prompt. The fused rounding differs from the unfused (the SiLU
sees the product before it is rounded to bf16, and nothing is rounded between it and the
product), by about a bf16 unit of the result; it is the same for every decoding method,
as the prompt's other kernels already are (``linear``, ``attention``).
"""

from __future__ import annotations

import logging

import torch
from transformers.activations import SiLUActivation

from .linear import RowInvariantLinear, prompt_rows_in, tree_rows_apart, weight_dtype

log = logging.getLogger(__name__)


class FusedGatedMLP(torch.nn.Module):
    """Mixed in before a model's MLP class: a prompt's rows by the fused projections, other
    rows (and a draft's float16 copy of the module) by the model's own arithmetic."""

    gate_proj: torch.nn.Module
    up_proj: torch.nn.Module
    down_proj: torch.nn.Module
    act_fn: torch.nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        prompt = prompt_rows_in(len(rows))
        if not prompt or not isinstance(self.up_proj, RowInvariantLinear):  # a draft's float16 copy
            return super().forward(x)  # type: ignore[no-any-return]
        with tree_rows_apart(0):  # the slice holds the prompt's rows alone
            inner = [self.up_proj(rows[:prompt], post=self.gate_proj(rows[:prompt], post="swish"))]
        if prompt < len(rows):
            rest = rows[prompt:]
            inner.append(self.act_fn(self.gate_proj(rest)) * self.up_proj(rest))
        return self.down_proj(torch.cat(inner).reshape(*x.shape[:-1], -1))  # type: ignore[no-any-return]


_FUSED_CLASSES: dict[type, type] = {}


def _fused_class(cls: type) -> type:
    if cls not in _FUSED_CLASSES:
        _FUSED_CLASSES[cls] = type(f"Fused{cls.__name__}", (FusedGatedMLP, cls), {"__doc__": FusedGatedMLP.__doc__})
    return _FUSED_CLASSES[cls]


def _is_gated_silu(module: torch.nn.Module) -> bool:
    """A module with row-invariant gate, up and down projections that have a row limit per
    call, and a SiLU activation, whose forward is the model's own (not already fused).  On
    layers that could not be packed the fused path computes what the model's forward does,
    in the same steps."""
    layers = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    activation = getattr(module, "act_fn", None)
    return (all(isinstance(layer, RowInvariantLinear) and layer.max_rows is not None for layer in layers)
            and isinstance(activation, (SiLUActivation, torch.nn.SiLU))
            and not isinstance(module, FusedGatedMLP))


def fuse(model: torch.nn.Module) -> int:
    """Fuse every row-limited SiLU-gated MLP of ``model`` for prompts, in place (after
    ``linear.install_row_invariant``); returns how many.  Nothing is fused if this PyTorch
    build lacks the post-ops (logged)."""
    mlps = [module for module in model.modules() if _is_gated_silu(module)]
    if not mlps or not _post_ops_work(mlps[0]):
        return 0
    for module in mlps:
        module.__class__ = _fused_class(type(module))
    return len(mlps)


def _post_ops_work(mlp: torch.nn.Module) -> bool:
    """Whether the fused products run here and agree with the model's own MLP (within a few
    units of the dtype's last place: the rounding steps differ)."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(3, mlp.gate_proj.in_features, generator=generator).to(weight_dtype(mlp.gate_proj))
    try:
        with torch.inference_mode():
            expected = mlp(rows).float()
            fused = mlp.down_proj(mlp.up_proj(rows, post=mlp.gate_proj(rows, post="swish"))).float()
    except RuntimeError as exc:  # no such post-op in this build's oneDNN
        log.info("oneDNN post-ops unavailable (%s): MLPs unfused", exc)
        return False
    tolerance = 0.05 * float(expected.abs().max()) + 1e-6
    if not bool(((fused - expected).abs() <= tolerance).all()):
        log.warning("oneDNN's fused MLP disagrees with the model's own: MLPs unfused")
        return False
    return True
