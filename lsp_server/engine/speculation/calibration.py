"""Measure how verification time grows with tree size on the running device, once.

The result is saved per model, device and dtype in the cache dir, so only the first
start on a machine pays the few seconds it takes.  A curve measured while other processes
kept the CPU busy is used for that session but not saved: here, a first start during a
two-thread data build measured 1,712 ms for a plain pass that takes 36 ms, and a flat curve
past 8 nodes where the real one triples by 64, and every later start drafted from it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from pathlib import Path

from ...paths import cache_root
from ..kv_cache import new_cache
from .budget import VerifyCostModel
from .draft_tree import DraftTree
from .verify import TreeVerifier

log = logging.getLogger(__name__)


def _random_tree(size: int, vocab: int, rng: random.Random) -> DraftTree:
    """A bushy tree like real drafts: a few chains branching near the root."""
    parents = [-1 if i < 3 else rng.randrange(max(0, i - 4), i) for i in range(size)]
    depths: list[int] = []
    for parent in parents:
        depths.append(1 if parent == -1 else depths[parent] + 1)
    tokens = [rng.randrange(vocab) for _ in range(size)]
    return DraftTree(tokens, parents, depths, [1.0] * size, [frozenset()] * size)


def measure(verify: TreeVerifier, vocab: int, context_tokens: int = 512, repeats: int = 3) -> VerifyCostModel:
    """Time verification passes over a ``context_tokens``-long cache for each tree size."""
    rng = random.Random(0)
    cache = new_cache()
    verify(cache, [rng.randrange(vocab) for _ in range(context_tokens)], DraftTree.empty())
    base = cache.get_seq_length()

    def run_pass(size: int) -> None:
        verify(cache, [rng.randrange(vocab)], _random_tree(size, vocab, rng))
        cache.crop(base - cache.get_seq_length())

    return VerifyCostModel.measure(run_pass, repeats)


CURVE_VERSION = 4
"""Part of a saved curve's name: curves saved before the busy check (version 1), before
the sizes around 16 and 32 rows (version 2) or before every size up to 8 (version 3) are
measured anew."""

BUSY_ELSEWHERE = 0.25
"""Share of the machine's CPU time other processes may use while measuring, for the curve to be saved."""


class CpuShare:
    """How much of all cores' time other processes (or the hypervisor) took since this was made.

    From the kernel's counters (``/proc/stat``, Linux) less this process's own CPU time;
    ``None`` where there are no such counters."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait; steal counts as busy
        return busy / os.sysconf("SC_CLK_TCK"), time.process_time(), time.perf_counter()

    def others(self) -> float | None:
        end = self._read()
        if self._start is None or end is None:
            return None
        busy, ours, wall = (after - before for after, before in zip(end, self._start))
        return max(0.0, busy - ours) / (max(wall, 1e-9) * (os.cpu_count() or 1))


def cost_model_for(verify: TreeVerifier, model_name: str, vocab: int, kernels: str,
                   share: type[CpuShare] = CpuShare) -> VerifyCostModel:
    """The saved cost curve for this model/device/dtype/kernels, measuring it if there is none."""
    identity = f"{model_name}|{verify.device}|{verify.dtype}|{kernels}|{CURVE_VERSION}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    path = Path(cache_root()) / "calibration" / f"verify-cost-{key}.json"
    saved = VerifyCostModel.load(path)
    if saved is not None:
        return saved
    watch = share()
    model = measure(verify, vocab)
    curve = ", ".join(f"{n}: {s * 1000:.0f} ms" for n, s in zip(model.sizes, model.seconds))
    others = watch.others()
    if others is not None and others > BUSY_ELSEWHERE:
        log.warning("verify cost on %s/%s measured while other processes used %.0f%% of the CPU (%s): "
                    "used for now, not saved; measured again at the next start", verify.device, verify.dtype,
                    100 * others, curve)
        return model
    model.save(path)
    log.info("verify cost on %s/%s: %s", verify.device, verify.dtype, curve)
    return model
