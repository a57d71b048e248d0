"""Measure how verification time grows with tree size on the running device, once.

The result is saved per model, device and dtype in the cache dir, so only the first
start on a machine pays the few seconds it takes.
"""

from __future__ import annotations

import hashlib
import logging
import random
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


def cost_model_for(verify: TreeVerifier, model_name: str, vocab: int, kernels: str) -> VerifyCostModel:
    """The saved cost curve for this model/device/dtype/kernels, measuring it if there is none."""
    key = hashlib.sha256(f"{model_name}|{verify.device}|{verify.dtype}|{kernels}".encode()).hexdigest()[:16]
    path = Path(cache_root()) / "calibration" / f"verify-cost-{key}.json"
    saved = VerifyCostModel.load(path)
    if saved is not None:
        return saved
    model = measure(verify, vocab)
    model.save(path)
    log.info("verify cost on %s/%s: %s", verify.device, verify.dtype,
             ", ".join(f"{n}: {s * 1000:.0f} ms" for n, s in zip(model.sizes, model.seconds)))
    return model
