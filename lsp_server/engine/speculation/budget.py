"""Hardware-aware draft size: as many tree nodes as pay for themselves on this device.

Verification cost grows with the number of tree nodes, slowly on a GPU and steeply on a
CPU (measured here, bf16: 1 token 75 ms, 16 tokens 105 ms, 64 tokens 187 ms).  The cost
curve is measured on the running device once (and saved per model/device/dtype); each
step then takes the first ``n`` nodes of the probability-ordered tree that maximise
expected tokens per second: ``(1 + sum of the nodes' acceptance probabilities) / t(n)``.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .isotonic import non_decreasing

log = logging.getLogger(__name__)

SIZES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 16, 20, 24, 31, 32, 48, 64)
"""Tree sizes measured.  Every size up to 8: on this 2-core CPU (bf16, single rows padded
to 3-4 rows, ``engine.small_calls``) a pass costs about the same up to 4-5 nodes and then
steps up (512-token cache: 0 nodes 67 ms, 4 nodes 69, 6 nodes 76, 8 nodes 78, 12 nodes 95);
a curve through 0, 2, 4 and 8 alone priced the 3rd to 5th node at a slope they do not
have.  15/16 and 31/32 straddle the steps of a CPU whose products are
split into calls of at most 16 or 32 rows (``engine.linear.rows_per_call``; with the
pending token, 32 nodes are 33 rows): on AMX here 31 nodes cost about what 16 do and
32 nodes 1.6 times that, a step that a curve through 16 and 32 alone would smear over
the sizes between."""


class VerifyCostModel:
    """Seconds per verification pass as a function of tree size (piecewise linear)."""

    def __init__(self, sizes: Sequence[int], seconds: Sequence[float]) -> None:
        if len(sizes) != len(seconds) or not sizes:
            raise ValueError("need one time per size")
        self.sizes = list(sizes)
        # A bigger tree never costs less: timing noise is pooled away (isotonic fit).
        self.seconds = non_decreasing(seconds)

    def __call__(self, nodes: int) -> float:
        i = bisect.bisect_left(self.sizes, nodes)
        if i < len(self.sizes) and self.sizes[i] == nodes:
            return self.seconds[i]
        if i == 0:
            return self.seconds[0]
        if i == len(self.sizes):
            lo, hi = len(self.sizes) - 2, len(self.sizes) - 1
        else:
            lo, hi = i - 1, i
        slope = (self.seconds[hi] - self.seconds[lo]) / (self.sizes[hi] - self.sizes[lo])
        return self.seconds[lo] + slope * (nodes - self.sizes[lo])

    @classmethod
    def measure(cls, run_pass: Callable[[int], None], repeats: int = 3, sizes: Sequence[int] = SIZES) -> VerifyCostModel:
        """Time ``run_pass(n)`` for each size; the median of ``repeats`` runs each.  The sizes
        are timed in turn, round after round, so that a slow spell of the machine spreads over
        all of them instead of lifting a few neighbours above the rest."""
        run_pass(0)  # warm-up: first passes pay for allocations
        samples: list[list[float]] = [[] for _ in sizes]
        for _ in range(repeats):
            for size, times in zip(sizes, samples):
                started = time.perf_counter()
                run_pass(size)
                times.append(time.perf_counter() - started)
        return cls(sizes, [sorted(times)[len(times) // 2] for times in samples])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"sizes": self.sizes, "seconds": self.seconds}))

    @classmethod
    def load(cls, path: Path) -> VerifyCostModel | None:
        try:
            data = json.loads(path.read_text())
            return cls(data["sizes"], data["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


class OnlineCost:
    """The calibrated curve, corrected by the passes actually observed.

    Calibration runs at a fixed context length; real prompts are often longer, and every
    extra tree node then costs more attention.  A pass without a tree is also a different
    computation from any tree pass (one token, no mask: the cheapest kernels), so the cost
    has a step between 0 and 1 node that a single line would smooth away, making small
    trees look cheap.  So plain passes and tree passes are tracked apart: plain passes by
    a decayed mean, tree passes by decayed least squares on the calibrated curve,
    ``a + b * calibrated(n)``, once their sizes vary enough, else by the calibrated curve
    shifted through their mean.  Fitting the curve rather than a line through ``n`` keeps
    its shape: here a pass costs about the same up to 4-5 nodes and then steps up, and
    a line through HumanEval's trees (mostly 2-3 nodes, some 6-8) priced the 4th and 5th
    node at 6 ms each where they cost about 1 ms (``SIZES``), so trees stopped at 3.  Past
    the largest tree observed, the fit grows by the calibrated rise, scaled up where the
    fit's scale is above 1 (never down): a CPU whose products are split into 32-row calls
    has a step there that the smaller trees cannot show.
    """

    def __init__(self, calibrated: VerifyCostModel, decay: float = 0.97, min_weight: float = 8.0) -> None:
        self.calibrated = calibrated
        self.decay = decay
        self.min_weight = min_weight
        self._plain = [0.0, 0.0]  # weight, Σt
        self._sums = [0.0] * 7  # tree passes: weight, Σn, Σn², Σc, Σc², Σt, Σct (c: calibrated cost)
        self._largest = 0

    def observe(self, nodes: int, seconds: float) -> None:
        if nodes == 0:
            w, st = (value * self.decay for value in self._plain)
            self._plain = [w + 1, st + seconds]
            return
        c = self.calibrated(nodes)
        added = (1.0, nodes, nodes * nodes, c, c * c, seconds, c * seconds)
        self._sums = [value * self.decay + new for value, new in zip(self._sums, added)]
        self._largest = max(self._largest, nodes)

    def _tree_cost(self, nodes: int) -> float:
        w, sn, snn, sc, scc, st, sct = self._sums
        if w < self.min_weight:
            return self.calibrated(nodes)
        mean_c, mean_t = sc / w, st / w
        size_variance, cost_variance = snn / w - (sn / w) ** 2, scc / w - mean_c**2
        if size_variance >= 4.0 and cost_variance > (1e-3 * mean_c) ** 2:  # sizes varied enough to tell the scale
            scale = (sct / w - mean_c * mean_t) / cost_variance
            if scale > 0 and mean_t + scale * (self.calibrated(1) - mean_c) > 0:
                within = self.calibrated(min(nodes, self._largest))
                return mean_t + scale * (within - mean_c) + max(scale, 1.0) * (self.calibrated(nodes) - within)
        return self.calibrated(nodes) + mean_t - mean_c

    def __call__(self, nodes: int) -> float:
        if nodes > 0:
            return self._tree_cost(nodes)
        w, st = self._plain
        return st / w if w >= self.min_weight / 2 else self.calibrated(0)


def best_prefix(probabilities: Sequence[float], cost: Callable[[int], float], limit: int) -> int:
    """How many of the (descending-probability) nodes to verify for the most tokens/second."""
    best_n, best_rate, expected = 0, 1.0 / cost(0), 1.0
    for n, p in enumerate(probabilities[:limit], start=1):
        expected += p
        rate = expected / cost(n)
        if rate > best_rate:
            best_n, best_rate = n, rate
    return best_n
