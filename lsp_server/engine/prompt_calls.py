"""How many rows per call a prompt's products run fastest in on this machine, timed once.

A prompt's rows need no particular call size for exactness: plain decoding and
speculation both encode a prompt through the same ``RowInvariantLinear.forward`` and so
get the same bits whatever the split (``linear``).  They do need speed: the prompt's pass
is the same work for every decoding method and the first thing an editor user waits for.
oneDNN picks its blocking by the row count, and some picks are slow: on this project's
2-core AMX Xeon, bf16, the default model's MLP down projection (4864 -> 896) ran at about
1.3 TFLOP/s for 768 to 1,200 rows against 2.2-2.4 for 256-600 or 1,500-2,048 rows, so a
1,024-row call took 7.0 ms and two 512-row calls 3.7 ms; its up projection was fastest
in one call at every size.  Which layers suffer, and where, depends on the CPU and the
oneDNN build, so each kind of layer (shape, bias, dtype) is timed at a few prompt sizes,
in one call and in calls of ``SIZES`` rows, and keeps a split only where it saves at
least ``MARGIN`` on average.  The result is kept per machine (``kernel_facts``), so the
timing (about a second for the default model) runs at the first load only.
"""

from __future__ import annotations

import functools

import torch

from .kernel_facts import KernelFacts
from .linear import RowInvariantLinear, tune_per_kind, weight_dtype
from .timing import interleaved_medians

SIZES = (512, 256)
"""Call sizes tried for a prompt's rows, beside one call."""
PROMPT_LENGTHS = (768, 1024, 2048)
"""Prompt lengths timed: around the editor's default context (1,024 tokens) and a long one."""
MARGIN = 0.9
"""A split is kept only if it takes at most this fraction of one call's time, on average
over ``PROMPT_LENGTHS``: timing on a busy machine is noisy, and a wrong split only costs speed."""
_RUNS = 3


def _run(layer: RowInvariantLinear, rows: torch.Tensor, size: int | None) -> None:
    layer.prompt_rows = size
    layer.prompt_calls(rows)


def fastest_split(layer: RowInvariantLinear) -> int | None:
    """The call size (None: one call) that runs ``layer`` fastest on prompt-sized inputs."""
    dtype = weight_dtype(layer)
    generator = torch.Generator().manual_seed(0)
    candidates = (None, *SIZES)
    relative = dict.fromkeys(candidates, 0.0)
    with torch.inference_mode():
        for length in PROMPT_LENGTHS:
            rows = torch.randn(length, layer.in_features, generator=generator).to(dtype)
            median = interleaved_medians({size: functools.partial(_run, layer, rows, size) for size in candidates},
                                         _RUNS)
            for size in candidates:
                relative[size] += median[size] / median[None] / len(PROMPT_LENGTHS)
    best = min(SIZES, key=relative.__getitem__)
    return best if relative[best] <= MARGIN else None


def split_prompts(layers: list[RowInvariantLinear], facts: KernelFacts) -> dict[str, int]:
    """Set every layer's ``prompt_rows`` to its kind's fastest split, timed here or read from
    ``facts``; returns the kinds that are split (for the load log)."""
    splits = tune_per_kind(layers, facts, "prompt-rows", (None, *SIZES), lambda members: fastest_split(members[0]),
                           "prompt_rows")
    return {kind: size for kind, size in splits.items() if size}
