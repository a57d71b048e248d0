"""The general code corpus: this machine's Python standard library, indexed once per tokenizer.

The stdlib is ordinary, well-written code that is always present and needs no download.
Test suites and ``site-packages`` are left out; the files are taken in an order fixed by
a hash of their path (a spread over the whole library, not its first letters) until a
token budget is reached, which bounds both the build time and the memory (~30 bytes per
token).  The built index is saved as one ``.npz`` per tokenizer, corpus and budget.
"""

from __future__ import annotations

import json
import logging
import sys
import sysconfig
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .cache import datastore_dir, short_hash
from .index import Segment, TokenIndex, Unit, as_tokens
from .persist import write_npz
from .types import Encode, EncodeBatch

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 1_000_000
"""Tokens: about 30 MB of index, built in well under a minute on two cores."""
FORMAT = 1
_SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
_BATCH_FILES = 64

Progress = Callable[[int, int], None]
"""Called with (tokens indexed so far, token budget)."""


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: Path) -> list[Path]:
    """The ``.py`` files of ``root`` outside test and package folders, in a hash-fixed order."""
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _SKIPPED_DIRS.isdisjoint(rel.parts[:-1]) and not path.is_symlink():
            files.append(path)
    return sorted(files, key=lambda p: (zlib.crc32(p.relative_to(root).as_posix().encode()), p))


def cache_path(tokenizer_key: str, root: Path, budget: int) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    key = short_hash(tokenizer_key, str(root), version, str(budget), str(FORMAT))
    return datastore_dir() / "general" / f"{key}.npz"


def build(encode: Encode, encode_batch: EncodeBatch | None, files: list[Path], budget: int,
          progress: Progress | None = None) -> Segment | None:
    """Tokenize ``files`` in order until ``budget`` tokens and index them (one segment)."""
    units: list[Unit] = []
    total = 0
    for first in range(0, len(files), _BATCH_FILES):
        texts = []
        for path in files[first : first + _BATCH_FILES]:
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                log.info("general corpus: skipping %s: %s", path, exc)
        encoded = encode_batch(texts) if encode_batch is not None else [encode(t) for t in texts]
        for ids in encoded:
            take = min(len(ids), budget - total)
            if take > 0:
                units.append(Unit(len(units), as_tokens([]), as_tokens(ids[:take]), as_tokens([])))
                total += take
        if progress is not None:
            progress(total, budget)
        if total >= budget:
            break
    return Segment(units) if units else None


def save(path: Path, segment: Segment, meta: dict[str, object]) -> None:
    write_npz(path, {"meta": np.array(json.dumps({**meta, "format": FORMAT})), **segment.arrays()})


def load(path: Path) -> Segment | None:
    """The saved segment, or None (logged) when absent or unusable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if json.loads(str(data["meta"])).get("format") != FORMAT:
                return None
            return Segment.from_arrays(data["buf"], data["keys"], data["layout"], data["order"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable general corpus cache %s: %s", path, exc)
        return None


def as_index(segment: Segment | None) -> TokenIndex:
    index = TokenIndex()
    if segment is not None:
        index.load_segment(segment)
    return index
