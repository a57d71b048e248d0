"""Draft-head training data from whole files: teacher forcing over windows of real code.

The head learns, from a state and the token fed after it, which token the model picks
next.  Any position of any code the model reads is such a pair, not only the function
bodies GenGuard's sites cover: one forward pass over a window of ``window`` tokens gives
``window`` pairs at prefill speed (about 450 tokens/s for the default model on 2 cores,
against ~25 tokens/s for generating).  So ``swiftguard drafthead build-data`` reads
windows of real files (a user's own repository, the standard library, unpacked source
distributions), stores each position's final-norm state and token in GenGuard's shard
format, with no stop labels, and ``drafthead train`` takes these shards as they are.

Windows are spread: files in a hashed order, at random non-overlapping offsets, and at
most ``per_repo`` tokens per repository, so that one large repository neither fills the
budget nor makes the held-out split (by whole repositories) meaningless.  A window that
contains a HumanEval signature is left out (HumanEval is the evaluation).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..genguard.data import IGNORE, Sample, ShardWriter, Source, Span, as_features, def_lines, greedy_picks, read_code


@dataclass(frozen=True)
class Window:
    """Consecutive token ids of one file; ``span.name`` says at which token they start."""

    span: Span
    ids: list[int]


def iter_windows(source: Source, tokenizer: Any, window: int, per_file: int, per_repo: int, seed: int,
                 exclude: frozenset[str] = frozenset(), min_tokens: int = 64) -> Iterator[Window]:
    """Windows of ``source``'s files: up to ``per_file`` per file and ``per_repo`` tokens per repository."""
    rng = random.Random(seed)
    taken: Counter[str] = Counter()
    for path in source.files():
        repo = source.repo_of(path)
        if taken[repo] >= per_repo:
            continue
        text = read_code(path)
        if text is None:
            continue
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        starts = list(range(0, max(1, len(ids) - min_tokens + 1), window))
        for start in sorted(rng.sample(starts, min(per_file, len(starts)))):
            chunk = ids[start : start + window][: per_repo - taken[repo]]
            if len(chunk) < min_tokens or not def_lines(tokenizer.decode(chunk)).isdisjoint(exclude):
                continue
            taken[repo] += len(chunk)
            yield Window(Span(source.language, repo, str(path), f"tokens@{start}"), chunk)


def window_sample(decoder: Any, window: Window) -> Sample:
    """Row ``j`` is the state from which token ``j`` was predicted (GenGuard's alignment); the
    first token has no such state in the window, so a window of ``n`` tokens gives ``n - 1`` rows."""
    from ..engine.kv_cache import new_cache

    states = decoder.hidden_states(window.ids, new_cache())[:-1]
    ids = np.array(window.ids[1:], dtype=np.int32)
    return Sample(window.span, "file", as_features(states), np.full(len(ids), IGNORE, dtype=np.uint8), ids,
                  picks=greedy_picks(decoder.model.get_output_embeddings(), states))


def build_windows(decoder: Any, windows: Iterator[Window], writer: ShardWriter, tokens: int,
                  deadline: float | None = None, progress: Callable[[str], None] = lambda _m: None) -> int:
    """Run windows through the model until ``tokens`` positions are stored or the ``deadline``
    (``time.perf_counter()`` seconds) has passed, after one window at least; returns how many were."""
    started, stored = time.perf_counter(), 0
    for window in windows:
        if stored >= tokens or (stored and deadline is not None and time.perf_counter() >= deadline):
            break
        sample = window_sample(decoder, window)
        writer.add(sample)
        stored += len(sample.token_ids)
        if len(writer.samples) % 50 == 0:
            elapsed = time.perf_counter() - started
            progress(f"{stored} tokens from {len(writer.samples)} windows, {elapsed:.0f}s ({stored / elapsed:.0f}/s)")
    return stored
