"""CPU linear layers: fast on few rows, and exact whatever the number of rows.

Speed.  On a CPU, ``torch.nn.functional.linear`` in bf16 goes to oneDNN, which reorders
the whole weight into its blocked layout on every call.  Decoding multiplies a few rows
by every weight matrix of the model, so that reorder (a full extra read and write of
the weights) costs more than the product itself.  The weights are therefore reordered
once, at load time, and each call runs oneDNN's product on the packed weight.  Measured
on the default model here (2 cores, bf16): a 1-token pass over the model body 55.7 ->
35.4 ms, a 17-token tree pass 79.9 -> 49.7 ms, the LM head on 17 rows 19.9 -> 8.6 ms.
The packed product gives the same bits as the unpacked one for a 300-row prompt.

Exactness.  A product with a single input row takes a matrix-vector kernel that splits
the long inner dimension across threads; products of two rows or more take a
matrix-matrix kernel that does not.  For Qwen2.5-Coder-0.5B's MLP down projection
(4864 -> 896) the single-row result differs in the last bit for some inputs (11 of 32
random rows unpacked, 1 of 9 packed), so a token decoded alone (plain greedy decoding) and the same token inside a
verification tree got different hidden states, and bf16 speculation flipped greedy
near-ties.  A single row is therefore computed as two copies of it (or more, where that
was timed faster: ``small_calls``): every row then gets the same bits whatever the row
count (checked for 2 to 2,100 rows, packed or not).

On a CPU with AMX (Intel Sapphire Rapids and later) oneDNN's bf16 product picks its
blocking by the row count too: a row got other bits in a call of more than 32 rows than
in a call of its own, packed or not, so bf16 speculation diverged from plain decoding
(HumanEval 24: 5 outputs differed from ``generate``'s at one-ulp near-ties).  Calls of
up to 32 rows all agreed with each other (every size from 1 to 32, any position of the
row).  So the model's layers are probed (``rows_per_call``; default model: 0.6 s in bf16,
1.3 s in fp32, mostly the LM head's single rows; once per machine, then read from the
cache dir: ``kernel_facts``): where a big call differs from calls of one row, products
are computed in calls of at most 32 rows.
Prompts are the exception (a 1,024-token prefill took 1.22 instead of 0.86 s in 32-row
calls): a call of more than ``PROMPT_ROWS`` rows, which no decoding pass makes, is
computed in one call, or in calls of ``prompt_rows`` where that was timed faster on this
machine (``prompt_calls``), except the tree rows that ride on a prompt's pass
(``tree_rows_apart``), which get their decoding bits.  Plain decoding and speculation
then compute a prompt alike and every decoding token alike; only a prompt encoded in
small pieces (new tokens after a reused KV cache) differs from a whole one in low bits
(and so attention computes such a prompt by its faster stock kernel too: ``attention``).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from .kernel_facts import KernelFacts, this_machine

log = logging.getLogger(__name__)

_PACK_ROWS_HINT = 16
"""The row count oneDNN is told to expect when it picks the packed layout (a decoding pass)."""
ROW_LIMITS = (32, 16)
"""Call sizes tried, in order, when a layer's product is not row-invariant in one call."""
_PROBE_ROWS = 48
PROMPT_ROWS = 128
"""Calls of more rows than this are prompts (a decoding pass has at most 64 tree nodes and
a few pending tokens): one call for speed, whatever ``max_rows`` says."""
_TREE_ROWS: ContextVar[int] = ContextVar("tree_rows", default=0)
_ROWS_UNLIMITED: ContextVar[bool] = ContextVar("rows_unlimited", default=False)


def tree_rows() -> int:
    """How many last rows of the current pass are tree nodes (``tree_rows_apart``; 0 outside it)."""
    return _TREE_ROWS.get()


@contextmanager
def tree_rows_apart(rows: int) -> Iterator[None]:
    """Within this block, the last ``rows`` rows of a prompt-sized call are tree nodes: they
    are computed as a decoding pass computes them, apart from the prompt's one call."""
    token = _TREE_ROWS.set(rows)
    try:
        yield
    finally:
        _TREE_ROWS.reset(token)


@contextmanager
def rows_unlimited() -> Iterator[None]:
    """Within this block, products ignore ``max_rows``: for batch work whose rows need not
    get decoding's bits (training data).  Where AMX makes the engine split calls at 32 rows,
    that split cost batched greedy decoding of HumanEval prompts (64 new tokens) 13% more
    time at 16 sequences and, with 64, a second read of the weights per step: 0.52 s a
    prompt at 16 with the split, 0.28 s at 64 without it (December 4, the AMX Xeon here)."""
    token = _ROWS_UNLIMITED.set(True)
    try:
        yield
    finally:
        _ROWS_UNLIMITED.reset(token)


def _padded(rows: torch.Tensor, min_rows: int) -> torch.Tensor:
    """``rows`` [n, features] with copies of its first row added up to ``min_rows`` rows (none if n is 0)."""
    missing = min_rows - rows.shape[0]
    return torch.cat([rows, rows[:1].expand(missing, -1)]) if missing > 0 and len(rows) else rows


class RowInvariantLinear(torch.nn.Linear):
    """``nn.Linear`` that never hands its kernel fewer than ``min_rows`` rows (a single row
    takes the matrix-vector kernel) nor more than ``max_rows`` rows in one call."""

    max_rows: int | None = None
    min_rows: int = 2
    """Smaller calls are padded with copies of a row to this many; more than 2 where that
    was timed faster on this machine (``small_calls``)."""
    prompt_rows: int | None = None
    """A prompt's rows go in calls of this many (None: one call); see ``prompt_calls``."""

    def _product(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(rows, self.weight, self.bias)

    def _call(self, rows: torch.Tensor) -> torch.Tensor:
        out = self._product(_padded(rows, self.min_rows))
        return out[: rows.shape[0]]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = input.reshape(-1, input.shape[-1])
        limit, count = None if _ROWS_UNLIMITED.get() else self.max_rows, rows.shape[0]
        prompt = count - tree_rows() if count > PROMPT_ROWS else 0
        prompt = prompt if prompt > PROMPT_ROWS else 0  # the rows that a prompt-only pass has too
        if (limit is None or count <= limit) and (not prompt or self.prompt_rows is None):
            out = self._call(rows)
        else:
            parts = self.prompt_calls(rows[:prompt]) if prompt else []
            parts += [self._call(rows[start : start + (limit or count)]) for start in range(prompt, count, limit or count)]
            out = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out.reshape(*input.shape[:-1], self.out_features)

    def prompt_calls(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """A prompt's product, in calls of ``prompt_rows`` rows (None: one call)."""
        size = self.prompt_rows or len(rows)
        return [self._call(rows[start : start + size]) for start in range(0, len(rows), size)]


class PackedLinear(RowInvariantLinear):
    """``nn.Linear`` on a weight reordered once for oneDNN; single rows as two."""

    packed: torch.Tensor

    def _product(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")


def computes_trees_apart(model: torch.nn.Module) -> bool:
    """Whether a prompt's pass computes the tree rows riding on it in calls of their own
    (``tree_rows_apart``): where some layer splits its calls (``max_rows``, ``prompt_rows``).
    Then the tree's first row costs another read of those weights, about a decoding pass."""
    return any(isinstance(module, RowInvariantLinear) and (module.max_rows is not None or module.prompt_rows is not None)
               for module in model.modules())


def _invariant_in_calls_of(layer: RowInvariantLinear, rows: torch.Tensor, alone: torch.Tensor,
                           limit: int | None) -> bool:
    """Whether ``layer`` with calls of at most ``limit`` rows gives every row of ``rows`` the
    bits it gets in a call of its own (``alone``), at two alignments of the calls."""
    layer.max_rows = limit
    return all(torch.equal(layer(rows[start:]), alone[start:]) for start in (0, 3))


def weight_dtype(layer: RowInvariantLinear) -> torch.dtype:
    return layer.packed.dtype if isinstance(layer, PackedLinear) else layer.weight.dtype


def layer_kind(layer: RowInvariantLinear) -> str:
    """What a layer's kernel behaviour depends on: its class, shape, bias and dtype."""
    return "|".join(map(str, (type(layer).__name__, layer.in_features, layer.out_features, layer.bias is not None,
                              weight_dtype(layer))))


def _probe(layer: RowInvariantLinear) -> tuple[int | None, bool]:
    """The largest call size (None: any, then ``ROW_LIMITS``) at which ``layer`` gives random
    rows the bits they get in calls of their own, and whether one did (else the smallest)."""
    dtype = weight_dtype(layer)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(_PROBE_ROWS, layer.in_features, generator=generator).to(dtype)
    alone = torch.cat([layer._call(row[None]) for row in rows])
    for candidate in (None, *ROW_LIMITS):
        if _invariant_in_calls_of(layer, rows, alone, candidate):
            return candidate, True
    return ROW_LIMITS[-1], False


def _saved_limit(saved: object) -> tuple[int | None, bool] | None:
    """A probe result as ``KernelFacts`` keeps it, if it is one."""
    if isinstance(saved, dict) and saved.get("limit") in (None, *ROW_LIMITS) and isinstance(saved.get("exact"), bool):
        return saved["limit"], saved["exact"]
    return None


def rows_per_call(layers: list[RowInvariantLinear], facts: KernelFacts | None = None) -> int | None:
    """The largest call size (None: any) at which every distinct kind of layer (kernel, shape,
    bias, dtype) gives a row the same bits as a call of its own, probed on random rows or
    read from ``facts`` (saved there once probed); a warning if no size in ``ROW_LIMITS``
    does (then speculation may flip near-ties).  Sets every layer's ``max_rows`` to it."""
    kinds = {layer_kind(layer): layer for layer in layers}
    limits: list[int] = []
    with torch.inference_mode():
        for kind, layer in kinds.items():
            key = f"rows-per-call|packed for {_PACK_ROWS_HINT} rows|{kind}"
            found = _saved_limit(facts.get(key)) if facts is not None else None
            if found is None:
                found = _probe(layer)
                if facts is not None:
                    facts.put(key, {"limit": found[0], "exact": found[1]})
            limit, exact = found
            if not exact:
                log.warning("no call size gives %s rows the bits they get alone: speculation may flip "
                            "near-tied tokens on this CPU", kind.split("|")[0])
            if limit is not None:
                limits.append(limit)
    limit = min(limits, default=None)
    for layer in layers:
        layer.max_rows = limit
    return limit


def tune_per_kind(layers: list[RowInvariantLinear], facts: KernelFacts, fact: str, choices: tuple[int | None, ...],
                  measure: Callable[[list[RowInvariantLinear]], int | None], attribute: str) -> dict[str, int | None]:
    """Set ``attribute`` of every layer to its kind's value among ``choices``: read from ``facts``
    (under ``fact|kind``), else ``measure(the kind's layers)`` and saved there, so a choice
    timed on this machine is timed once.  Returns each kind's value."""
    kinds: dict[str, list[RowInvariantLinear]] = {}
    for layer in layers:
        kinds.setdefault(layer_kind(layer), []).append(layer)
    values = {}
    for kind, members in kinds.items():
        key = f"{fact}|{kind}"
        saved = facts.get(key)
        if isinstance(saved, dict) and "rows" in saved and saved["rows"] in choices:
            value = saved["rows"]
        else:
            value = measure(members)
            facts.put(key, {"rows": value})
            log.info("%s for %s: %s", fact, kind, value)
        for layer in members:
            setattr(layer, attribute, value)
        values[kind] = value
    return values


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACK_ROWS_HINT)


def packing_works(dtype: torch.dtype) -> bool:
    """Whether this PyTorch build can pack CPU weights of ``dtype`` and gets a correct product."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(48, 32, generator=generator).to(dtype)
        rows = torch.randn(3, 32, generator=generator).to(dtype)
        out = torch.ops.mkldnn._linear_pointwise(rows, _pack(weight), None, "none", [], "")
        return bool(torch.allclose(out.float(), (rows.float() @ weight.float().T), atol=0.1, rtol=0.05))
    except (RuntimeError, AttributeError) as exc:  # no oneDNN op, or no kernel for this dtype/CPU
        log.info("oneDNN weight packing unavailable (%s): plain linear kernels", exc)
        return False


def install_row_invariant(model: torch.nn.Module, pack: bool = True, keep_half: bool = False) -> str:
    """Make every plain ``nn.Linear`` of ``model`` row-invariant, in place, packed when ``pack``
    and this build allows it; returns the kernel used ("packed" or "plain", with the row
    limit per call where this CPU needs one: ``rows_per_call``).

    A packed layer drops its unpacked weight (the memory would double otherwise), except
    a weight shared with another module (an LM head tied to the input embeddings); with
    ``keep_half`` it keeps a float16 copy as ``weight16`` first (for
    ``speculation.model_draft``: oneDNN has no way back from its packed layout).
    """
    linears = [module for module in model.modules() if type(module) is torch.nn.Linear]
    dtype = linears[0].weight.dtype if linears else torch.float32
    if not (pack and linears and packing_works(dtype)):
        for module in linears:
            module.__class__ = RowInvariantLinear
        return _kernel_name("plain", linears)
    shared = {id(p) for m in model.modules() if type(m) is not torch.nn.Linear for p in m.parameters(recurse=False)}
    for module in linears:
        module.packed = _pack(module.weight)
        module.__class__ = PackedLinear
        if id(module.weight) not in shared:
            if keep_half:
                module.weight16 = module.weight.detach().to(torch.float16)
            module.weight = torch.nn.Parameter(module.weight.new_empty(0), requires_grad=False)
    return_freed_memory()
    return _kernel_name("packed", linears)


def _kernel_name(kernel: str, linears: list[torch.nn.Module]) -> str:
    """``kernel``, with the row limit that ``rows_per_call`` found if one was needed."""
    limit = rows_per_call(linears, this_machine())  # type: ignore[arg-type]
    return kernel if limit is None else f"{kernel} ({limit}-row calls)"


def return_freed_memory() -> None:
    """Hand freed pages back to the OS, which glibc keeps otherwise: after packing (default
    model: 2,344 MB resident after packing, 1,678 MB after this; 1,676 unpacked), and after the
    LM head's screen is built (``screened_argmax``)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
