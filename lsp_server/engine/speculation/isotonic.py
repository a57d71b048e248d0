"""Non-decreasing fits of noisy measurements (isotonic regression by pooling adjacent violators).

Two measurements should never decrease: a node's acceptance rate as its drafted
probability grows, and a verification pass's time as its tree grows.  Noise breaks both
now and then; pooling a violating run into its weighted mean is the least-squares fix,
where a running maximum would let one high sample hold up every later value.
"""

from __future__ import annotations

from collections.abc import Sequence


def non_decreasing(values: Sequence[float], weights: Sequence[float] | None = None) -> list[float]:
    """The weighted least-squares non-decreasing fit of ``values`` (equal weights by default)."""
    blocks: list[list[float]] = []  # [weighted sum, weight, count]
    for index, value in enumerate(values):
        weight = 1.0 if weights is None else weights[index]
        blocks.append([value * weight, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            total, weight, count = blocks.pop()
            blocks[-1] = [blocks[-1][0] + total, blocks[-1][1] + weight, blocks[-1][2] + count]
    return [total / weight for total, weight, count in blocks for _ in range(int(count))]
