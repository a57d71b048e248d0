"""How many rows a decoding pass's smallest products are padded to on this machine, timed once.

A pass of plain decoding multiplies one row by every weight matrix (as two copies of it:
``linear``), and a small verification tree a few rows more.  oneDNN picks its kernel by the
row count, and on this project's 2-core AMD EPYC (AVX-512 with bf16 dot products, no AMX)
two rows took longer than three to six: the default model's body, every weight read once
in bf16, took 40.6 / 46.6 / 40.3 ms in calls of 2 rows against 37.2 / 37.7 / 36.8 in calls
of 3 (three runs of nine, medians), and its LM head 12.7 against 11.1 ms.  Which sizes are
slow depends on the CPU and the oneDNN build, so each kind of layer (shape, bias, dtype) is
timed once on one row padded to each of ``SIZES`` rows, through all the layers of that kind
in turn, as a pass reads them (one layer alone would sit in the CPU's caches), and keeps the
fastest size only where it saves at least ``MARGIN``.  The result is kept per machine
(``kernel_facts``).

Padding changes no bits: a row gets the same bits in every call of two rows or more
(``linear``; probed per machine by ``rows_per_call``, which runs first and bounds the call
size), so a token decoded alone still gets exactly what it gets inside a tree.
"""

from __future__ import annotations

import functools

import torch

from .kernel_facts import KernelFacts
from .linear import RowInvariantLinear, tune_per_kind, weight_dtype
from .timing import interleaved_medians

SIZES = (2, 3, 4)
"""Rows a single row is padded to, the first being the default (``RowInvariantLinear.min_rows``)."""
MARGIN = 0.95
"""A larger size is kept only if it takes at most this fraction of the default's time:
timing on a busy machine is noisy, and a wrong choice only costs speed."""
_RUNS = 7


def _run(layers: list[RowInvariantLinear], row: torch.Tensor, size: int) -> None:
    for layer in layers:
        layer.min_rows = size
        layer._call(row)


def fastest_padding(layers: list[RowInvariantLinear]) -> int:
    """The padded size (``SIZES``) at which one row runs through ``layers`` (one kind) fastest."""
    row = torch.randn(1, layers[0].in_features, generator=torch.Generator().manual_seed(0)).to(weight_dtype(layers[0]))
    with torch.inference_mode():
        median = interleaved_medians({size: functools.partial(_run, layers, row, size) for size in SIZES}, _RUNS)
    best = min(SIZES, key=median.__getitem__)
    return best if median[best] <= MARGIN * median[SIZES[0]] else SIZES[0]


def pad_small_calls(layers: list[RowInvariantLinear], facts: KernelFacts) -> dict[str, int]:
    """Set every layer's ``min_rows`` to its kind's fastest padding, timed here or read from
    ``facts``; returns the kinds padded beyond the default (for the load log)."""
    sizes = tune_per_kind(layers, facts, "min-rows", SIZES, fastest_padding, "min_rows")
    return {kind: size for kind, size in sizes.items() if size != SIZES[0] and size is not None}
