"""Greedy tokens from the LM head without reading all of its weight, and still exactly.

Why: a verification pass needs the argmax of the LM head at the rows its walk reaches, and
on a CPU the LM head is the widest matrix of a small model (the default model: 151,936 x
896, 272 MB in bf16), read in full by every pass however few rows it multiplies.  Greedy
decoding needs only the argmax, so a pass first screens every row with an int8 copy of the
head (oneDNN's int8 product, half the bytes), which bounds each logit within a small
interval; the few tokens whose interval reaches the best lower bound are recomputed from
the head's own rows in float32, and where the best of them beats the others by more than
rounding can blur, it is the token the full product would pick.  Otherwise (a near-tie,
about 2% of rows on HumanEval) that row takes the full product, as before.

Why it is exact.  The model's logits are ``round(acc_j)``: ``acc_j`` the kernel's float32
sum of the exact products ``x_i * w_ji`` (within ``gamma_j = H * 2**-23 * sum_i |x_i w_ji|``
of the real dot product ``x . w_j``, whatever the order of the sum), rounded to the
model's dtype; greedy takes the first maximum.  The screen multiplies ``x^`` (``x`` rounded
to int8 steps, per call) by ``w^_j`` (``w_j`` rounded to int8 steps, per row) with integer
sums, so ``|x . w_j - a_j| <= |x - x^| |w^_j| + |x| |w_j - w^_j| + (float32 scaling)``, all
norms known: each logit lies in ``[a_j - B_j, a_j + B_j]``.  A token outside the candidate
set is below the best lower bound by more than two accumulation errors and one rounding
step of the dtype, so its rounded logit is strictly below another's and it cannot be the
argmax, not even by a tie; the candidates' logits are recomputed in float32 from the exact
rows (again within ``gamma``), and the winner is kept only if it clears every other
candidate by the same margin.  ``tests/test_screened_argmax.py`` checks it against the full
product on random and real states, ties included.

Where it is used: verification passes on a CPU whose oneDNN build has the int8 product and
computes it exactly (probed once per head); a GPU reads its weights fast enough.  Memory:
the int8 copy (half the head) and a plain copy of the head's rows for the candidates (an LM
head packed for oneDNN keeps none): about 400 MB more for the default model.
"""

from __future__ import annotations

import logging
import weakref
from typing import Protocol

import torch

from ..drafthead.head import score_rows
from .greedy import greedy_tokens
from .kernel_facts import KernelFacts
from .linear import return_freed_memory
from .timing import interleaved_medians

log = logging.getLogger(__name__)

MAX_CANDIDATES = 1024
"""A row with more candidates than this takes the full product (the screen told it little)."""
_ACCUMULATION = 2.0**-23
"""float32's unit roundoff: one rounding of a float32 sum."""
_CHUNK = 16384
"""Rows quantized at a time (float32 copies of the whole head would take 0.5 GB a piece)."""
_ZERO_POINT = 128
"""The activations' int8 steps are stored unsigned around this (oneDNN's u8 x s8 product)."""


def _steps(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 rows as int8 steps of their scales (the values still float32)."""
    return torch.round(weight / scales[:, None]).clamp(-127, 127)


def _exact_rows(head: torch.nn.Module, hidden_size: int, tied: torch.Tensor | None) -> torch.Tensor:
    """The head's weight, exactly: ``tied`` where it equals the weight bit for bit, else a copy
    recovered from the (packed) head."""
    rows = score_rows(head, torch.arange(head.out_features), hidden_size)
    if tied is not None and tied.shape == rows.shape and tied.dtype == rows.dtype and torch.equal(tied, rows):
        return tied.detach()
    return rows


class ScreenedArgmax:
    """The greedy token of LM-head rows, by an int8 screen and an exact check of its candidates."""

    def __init__(self, head: torch.nn.Module, hidden_size: int, channel_size: torch.Tensor | None = None,
                 tied: torch.Tensor | None = None) -> None:
        """``channel_size`` [hidden]: how large each input channel tends to be (for a head after an
        RMS norm, its weight's magnitude); the screen then balances the channels (below).
        ``tied``: a plain tensor that may hold the head's weight (the input embeddings of a model
        that ties them); where it does, bit for bit, the screen checks its candidates on it
        instead of keeping a copy: 272 MB less (its size) for Qwen2.5-Coder-0.5B as the hub ships it.  The
        offline default, converted from GGUF, has a head of its own (its rows differ by up to 0.0044)."""
        self.dtype = next(head.parameters()).dtype
        self.head = head
        self._hidden = hidden_size
        with torch.inference_mode():
            self.rows = _exact_rows(head, hidden_size, tied)
            chunks = [self.rows[start : start + _CHUNK] for start in range(0, len(self.rows), _CHUNK)]
            self.balance = torch.ones(hidden_size)
            """Per channel, what the screen multiplies the weight by and divides the states by."""
            if channel_size is not None:
                widest = torch.stack([chunk.float().abs().amax(dim=0) for chunk in chunks]).amax(dim=0)
                self.balance = (channel_size.float().abs() / widest).sqrt().clamp(min=1e-3, max=1e3)
            parts = [self._screen_rows(chunk.float() * self.balance) for chunk in chunks]
            steps, self.scales, weight_error, screened_norm = (torch.cat(column) for column in zip(*parts))
            row_norm = torch.cat([chunk.float().norm(dim=1) for chunk in chunks])
            # The screen's error on a row is at most |x - x^| |w^_j| + |x| |w_j - w^_j| (balanced x
            # and w), and the model's own float32 sum is within gamma_j <= H u |x| |w_j| (Cauchy-Schwarz;
            # 4 more for the balancing's roundings of each product).
            self.basis = torch.stack([screened_norm, weight_error, (hidden_size + 4) * _ACCUMULATION * row_norm])
            self.basis_max = self.basis.amax(dim=1)
            self.packed = torch.ops.onednn.qlinear_prepack(steps, [16, hidden_size])
        del steps, parts, chunks
        return_freed_memory()  # the float32 copies made on the way: about 0.5 GB at their peak
        self._zero_points = torch.zeros(len(self.scales), dtype=torch.long)
        self.fallbacks = 0
        """Rows that took the full product (a near-tie, or too many candidates)."""
        self.rows_picked = 0

    @staticmethod
    def _screen_rows(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """For some of the (balanced) head's rows: their int8 steps, scales, and the norms the bounds need."""
        scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        steps = _steps(weight, scales)
        screened = steps * scales[:, None]
        return steps.to(torch.int8), scales, (weight - screened).norm(dim=1), screened.norm(dim=1)

    @classmethod
    def for_head(cls, head: torch.nn.Module, hidden_size: int, channel_size: torch.Tensor | None = None,
                 tied: torch.Tensor | None = None) -> ScreenedArgmax | None:
        """A screen for ``head`` where it is on a CPU and this build computes the int8 product
        exactly (probed on the real weight); None elsewhere, and the caller keeps the full product."""
        parameter = next(head.parameters(), None)
        if parameter is None or parameter.device.type != "cpu" or not hasattr(torch.ops.onednn, "qlinear_prepack"):
            return None
        try:
            screen = cls(head, hidden_size, channel_size, tied)
            if screen.computes_exactly():
                return screen
            log.info("the int8 product is not exact in this build: LM head read in full")
        except (RuntimeError, AttributeError, NotImplementedError) as exc:
            log.info("no int8 LM-head screen here (%s): LM head read in full", exc)
        return None

    def computes_exactly(self) -> bool:
        """Whether oneDNN's int8 product equals the integer sums it stands for, here (an older
        CPU's kernel may saturate 16-bit partial sums): random rows, checked in float64."""
        generator = torch.Generator().manual_seed(0)
        x = (torch.randn(4, self._hidden, generator=generator) * 3).to(self.dtype)
        quantized, scale = self._quantize(x)
        got = self._product(quantized, scale).double()
        steps = quantized.double() - _ZERO_POINT
        rows = torch.randint(0, len(self.scales), (512,), generator=generator)
        weight_steps = _steps(self.rows[rows].float() * self.balance, self.scales[rows]).double()
        want = scale * (steps @ weight_steps.T) * self.scales[rows].double()
        # Within the float32 scaling's rounding that the bounds allow for (``__call__``).
        return bool(torch.allclose(got[:, rows], want, rtol=4 * _ACCUMULATION, atol=1e-6))

    @staticmethod
    def _quantize(x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``x`` [rows, hidden] as unsigned int8 steps around ``_ZERO_POINT``, one scale for all rows."""
        values = x.float()
        scale = float(values.abs().max().clamp(min=torch.finfo(torch.float32).tiny)) / 127
        steps = torch.round(values / scale).clamp(-127, 127) + _ZERO_POINT
        return steps.to(torch.uint8), scale

    def _product(self, quantized: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.ops.onednn.qlinear_pointwise(quantized, scale, _ZERO_POINT, self.packed, self.scales,
                                                  self._zero_points, None, 1.0, 0, torch.float32, "none", [], "")

    @torch.inference_mode()
    def __call__(self, states: torch.Tensor) -> ScreenedRows:
        """Screen every row of ``states`` [rows, hidden] (the model's final-norm states) in one
        int8 product; each row's token is decided when asked for (``ScreenedRows.token``)."""
        x = states.float() / self.balance
        quantized, scale = self._quantize(x)
        screen = self._product(quantized, scale)
        x_error = (x - (quantized.float() - _ZERO_POINT) * scale).norm(dim=1)
        # Per row, the factors of ``self.basis``'s rows: the bound is their combination.
        factors = torch.stack([x_error, x.norm(dim=1), states.float().norm(dim=1)], dim=1)
        return ScreenedRows(self, states, screen, factors)

    def candidates(self, screen: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """The tokens whose logit may be the greedy one, for one row's screen [vocab] and its
        bound's ``factors`` [3]: a token left out is certainly below another after rounding."""
        slack = factors @ self.basis  # the bound on the screen's error plus gamma_j, per token
        slack += 8 * _ACCUMULATION * (screen.abs().max() + factors @ self.basis_max)  # the float32 sums' own roundings
        floor = (screen - slack).max()
        # 2 spacings: a value one spacing lower may lie in the binade below, where it is half.
        return torch.nonzero(screen + slack >= floor - 2 * _spacing(self.dtype, floor)).flatten()

    def pick(self, state: torch.Tensor, candidates: torch.Tensor) -> int:
        """The greedy token of ``state`` [hidden]: the best of ``candidates`` by their exact rows
        if rounding cannot change the order, else the full product's argmax."""
        self.rows_picked += 1
        if len(candidates) == 1:  # every other token is certainly below it
            return int(candidates[0])
        if 0 < len(candidates) <= MAX_CANDIDATES:
            x = state.float()
            rows = self.rows[candidates].float()
            logits = rows @ x
            # This float32 sum and the model's are each within gamma of the real dot product.
            accumulation = 2 * self._hidden * _ACCUMULATION * (rows.abs() @ x.abs())
            best = int(torch.argmax(logits))
            low = logits[best] - accumulation[best]
            high = logits + accumulation
            high[best] = -torch.inf
            if bool(low - _spacing(self.dtype, torch.maximum(low.abs(), high.max().abs())) > high.max()):
                return int(candidates[best])
        self.fallbacks += 1
        return int(greedy_tokens(self.head(state[None]))[0])


def _spacing(dtype: torch.dtype, magnitude: torch.Tensor) -> torch.Tensor:
    """At least the spacing of ``dtype``'s numbers up to ``magnitude``: two values further apart
    than this round to two different numbers, in their order (each moves by half a spacing):
    ``eps`` is the spacing relative to a value, at most."""
    return torch.finfo(dtype).eps * magnitude.abs() + torch.finfo(torch.float32).tiny


class Picks(Protocol):
    """Rows of one LM-head product: their logits, and each row's greedy token."""

    logits: torch.Tensor

    def token(self, row: int) -> int: ...


class FullRows:
    """Rows whose logits were computed in full: the greedy token is their argmax."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self._tokens = greedy_tokens(logits).tolist()

    def token(self, row: int) -> int:
        return self._tokens[row]


class ScreenedRows:
    """One screen product's rows: their estimated logits now, each row's exact token on demand
    (a verification pass reads the tokens of the rows its walk reaches, not of all it screened)."""

    def __init__(self, screen: ScreenedArgmax, states: torch.Tensor, logits: torch.Tensor,
                 factors: torch.Tensor) -> None:
        self.screen = screen
        self.states = states
        self.logits = logits
        """[rows, vocab] float32: estimates within the bounds above, enough to rank the likeliest
        tokens (Token Recycling), not exact."""
        self._factors = factors

    def token(self, row: int) -> int:
        with torch.inference_mode():
            candidates = self.screen.candidates(self.logits[row], self._factors[row])
            return self.screen.pick(self.states[row], candidates)


_SCREENS: weakref.WeakKeyDictionary[torch.nn.Module, ScreenedArgmax | None] = weakref.WeakKeyDictionary()
_TIMING_RUNS = 7
FASTER = 0.9
"""The screen is used only where it takes at most this fraction of the full product's time."""


def screen_pays(screen: ScreenedArgmax, states: torch.Tensor) -> bool:
    """Whether screening ``states`` is faster than the full product followed by an argmax, here.
    The screen's int8 product is timed, not its check of the candidates: on random states it
    finds hundreds (on a model's states a handful: the check is a small part of its time)."""
    with torch.inference_mode():
        median = interleaved_medians({"full": lambda: screen.head(states).float().argmax(-1),
                                      "screen": lambda: screen._product(*screen._quantize(states.float()))},
                                     _TIMING_RUNS)
    return median["screen"] <= FASTER * median["full"]


def screen_for(head: torch.nn.Module, hidden_size: int, facts: KernelFacts | None,
               channel_size: torch.Tensor | None = None, tied: torch.Tensor | None = None) -> ScreenedArgmax | None:
    """The screen for ``head`` (built once per head), where it pays on this machine: timed on
    states like a pass's once, then read from ``facts``; None where it is not used.
    ``channel_size`` and ``tied``: as for ``ScreenedArgmax``."""
    if head in _SCREENS:
        return _SCREENS[head]
    parameter = next(head.parameters(), None)
    key = f"lm-head screen|{getattr(head, 'out_features', 0)}x{hidden_size}|{getattr(parameter, 'dtype', None)}"
    pays = facts.get(key) if facts is not None else None
    screen = ScreenedArgmax.for_head(head, hidden_size, channel_size, tied) if pays is not False else None
    if screen is not None and not isinstance(pays, bool):
        generator = torch.Generator().manual_seed(0)
        pays = screen_pays(screen, (torch.randn(4, hidden_size, generator=generator) * 5).to(screen.dtype))
        if facts is not None:
            facts.put(key, pays)
        log.info("LM head %s: %s", "screened in int8" if pays else "read in full (the int8 screen was slower)", key)
    _SCREENS[head] = screen if pays else None
    return _SCREENS[head]
