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

log = logging.getLogger(__name__)

SIZES = (0, 2, 4, 8, 16, 32, 64)


class VerifyCostModel:
    """Seconds per verification pass as a function of tree size (piecewise linear)."""

    def __init__(self, sizes: Sequence[int], seconds: Sequence[float]) -> None:
        if len(sizes) != len(seconds) or not sizes:
            raise ValueError("need one time per size")
        self.sizes = list(sizes)
        # A bigger tree never costs less: smooth out timing noise so the curve is monotone.
        self.seconds = [max(seconds[: i + 1]) for i in range(len(seconds))]

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
        """Time ``run_pass(n)`` for each size; the median of ``repeats`` runs each."""
        run_pass(0)  # warm-up: first passes pay for allocations
        seconds = []
        for size in sizes:
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                run_pass(size)
                samples.append(time.perf_counter() - started)
            seconds.append(sorted(samples)[len(samples) // 2])
        return cls(sizes, seconds)

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
    extra tree node then costs more attention.  Recent (tree size, seconds) pairs are fit
    by decayed least squares to ``a + b * n``; once the fit has seen varied sizes it
    replaces the calibrated curve, whose shape alone decides the tree size.
    """

    def __init__(self, calibrated: VerifyCostModel, decay: float = 0.97, min_weight: float = 8.0) -> None:
        self.calibrated = calibrated
        self.decay = decay
        self.min_weight = min_weight
        self._sums = [0.0] * 5  # weight, Σn, Σt, Σn², Σnt

    def observe(self, nodes: int, seconds: float) -> None:
        w, sn, st, snn, snt = (value * self.decay for value in self._sums)
        self._sums = [w + 1, sn + nodes, st + seconds, snn + nodes * nodes, snt + nodes * seconds]

    def _fit(self) -> tuple[float, float] | None:
        w, sn, st, snn, snt = self._sums
        if w < self.min_weight:
            return None
        variance = snn / w - (sn / w) ** 2
        if variance < 4.0:  # sizes too alike to tell the slope
            return None
        slope = (snt / w - (sn / w) * (st / w)) / variance
        intercept = st / w - slope * sn / w
        if slope <= 0 or intercept <= 0:
            return None
        return intercept, slope

    def __call__(self, nodes: int) -> float:
        fit = self._fit()
        if fit is None:
            return self.calibrated(nodes)
        return fit[0] + fit[1] * nodes


def best_prefix(probabilities: Sequence[float], cost: Callable[[int], float], limit: int) -> int:
    """How many of the (descending-probability) nodes to verify for the most tokens/second."""
    best_n, best_rate, expected = 0, 1.0 / cost(0), 1.0
    for n, p in enumerate(probabilities[:limit], start=1):
        expected += p
        rate = expected / cost(n)
        if rate > best_rate:
            best_n, best_rate = n, rate
    return best_n
