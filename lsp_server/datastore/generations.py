"""The model's own generations as a draft source: what ``swiftguard drafthead build`` had it write.

The draft head's build has the model write function bodies of this machine's code from
their headers alone and keeps the tokens it wrote in its shards (``generated-*.npz``, the
``generated`` samples of ``genguard build-data``).  That is greedy output of this very
model: its idioms, its way of opening a loop or a docstring, where the general corpus has
the idioms of the people who wrote the standard library.  So an index of them drafts what
the model is about to write where general code does not.  On the tokens of the canonical
solutions of HumanEval's first 40 problems (December 4, the shards of two builds: 221k
tokens, against the general corpus's 1M), the top continuation of each position's longest
suffix match ran 0.236 tokens on average from the generations, 0.218 from general code and
0.322 from the better of the two: the two are right at different places.

Nothing is built ahead or saved: the shards already hold the tokens, and indexing 220k of
them takes about a second.  Repositories the caller names are left out, so that a benchmark
never drafts a removed body from the model's earlier completion of the same function.
"""

from __future__ import annotations

import itertools
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .index import TokenIndex, Unit, as_tokens

log = logging.getLogger(__name__)

_EMPTY = as_tokens([])


def generation_units(shard: Path, keep_repo: Callable[[str], bool], first_key: int = 0) -> dict[str, list[Unit]]:
    """The generated bodies of one shard whose repository ``keep_repo`` accepts, as index
    units by language.  Only the token arrays are read (the states beside them stay on disk)."""
    with np.load(shard, allow_pickle=False) as data:
        kinds, languages, repos = data["sample_kind"], data["sample_language"], data["sample_repo"]
        tokens, samples = data["token_ids"], data["sample_index"]
    units: dict[str, list[Unit]] = {}
    keys = itertools.count(first_key)
    starts = np.flatnonzero(np.diff(samples, prepend=-1))
    for start, end in zip(starts, [*starts[1:], len(samples)]):
        sample = int(samples[start])
        if kinds[sample] != "generated" or not keep_repo(str(repos[sample])):
            continue
        unit = Unit(next(keys), _EMPTY, as_tokens(tokens[start:end]), _EMPTY)
        units.setdefault(str(languages[sample]), []).append(unit)
    return units


def load_generations(shard_dir: Path, keep_repo: Callable[[str], bool]) -> dict[str, TokenIndex]:
    """An index per language of every generations shard in ``shard_dir`` (none: empty)."""
    by_language: dict[str, list[Unit]] = {}
    for shard in sorted(shard_dir.glob("generated-*.npz")):
        try:
            found = generation_units(shard, keep_repo, sum(len(units) for units in by_language.values()))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            log.warning("generations shard %s is left out: %s", shard, exc)
            continue
        for language, units in found.items():
            by_language.setdefault(language, []).extend(units)
    indexes = {}
    for language, units in by_language.items():
        index = TokenIndex()
        index.update(add=units)
        indexes[language] = index
    return indexes
