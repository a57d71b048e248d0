"""Timing candidates against each other on a shared machine, for choices made once per machine.

Kernel choices (``small_calls``, ``prompt_calls``, ``screened_argmax``) are timed at the
first load and kept in the kernel facts.  The machines are shared, so a slow spell would
lift whichever candidate it happened to hit: the candidates run in turn, round after round,
the first round only warms up, and each keeps the median of its rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping


def interleaved_medians(candidates: Mapping[Hashable, Callable[[], object]], runs: int) -> dict[Hashable, float]:
    """Seconds per call of each candidate: the median of ``runs`` rounds after one warm-up round."""
    times: dict[Hashable, list[float]] = {key: [] for key in candidates}
    for run in range(runs + 1):
        for key, call in candidates.items():
            started = time.perf_counter()
            call()
            if run:
                times[key].append(time.perf_counter() - started)
    return {key: statistics.median(samples) for key, samples in times.items()}
