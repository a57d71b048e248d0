"""Files as token units in a :class:`TokenIndex`; an edit re-indexes only what it touched.

Each file is split into chunks (see :mod:`.chunking`), each chunk is one index unit whose
lead and tail carry the 16 tokens before and after it, so the index answers exactly as if
whole files were indexed.  An edit re-tokenizes the chunks whose text changed and
re-indexes those plus the neighbours whose lead or tail reaches into them.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .chunking import split_chunks
from .index import MAX_K, MAX_SPAN, TokenIndex, Unit, as_tokens
from .types import Encode, EncodeBatch

log = logging.getLogger(__name__)

_EMPTY = np.zeros(0, dtype=np.uint32)


@dataclass(frozen=True)
class FileStamp:
    """What a file on disk looked like when it was read: checked before re-reading it."""

    mtime_ns: int
    size: int
    digest: str


@dataclass(frozen=True)
class FileContent:
    text: str
    stamp: FileStamp | None
    """None for an editor's buffer, which has no disk state."""


@dataclass
class FileEntry:
    tokens: np.ndarray
    chunk_hashes: list[bytes]
    chunk_lens: list[int]
    units: list[int]
    stamp: FileStamp | None


def chunk_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


class RepositoryIndex:
    """The token index of a set of files, keyed by path; not thread-safe for writers."""

    def __init__(self, encode: Encode, encode_batch: EncodeBatch | None = None,
                 max_tokens: int = 20_000_000) -> None:
        self.encode = encode
        self.encode_batch = encode_batch
        self.max_tokens = max_tokens
        self.index = TokenIndex()
        self.files: dict[str, FileEntry] = {}
        self.tokens = 0
        self._keys = itertools.count()
        self._warned_full = False

    def _encode_all(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        encoded = self.encode_batch(texts) if self.encode_batch is not None else [self.encode(t) for t in texts]
        return [as_tokens(ids) for ids in encoded]

    def apply(self, changes: Mapping[str, FileContent | None]) -> None:
        """Set (or with None, remove) the content of some files, as one index update."""
        remove: list[int] = []
        add: list[Unit] = []
        plans = []
        texts: list[str] = []
        for path, content in changes.items():
            old = self.files.get(path)
            if content is None:
                if old is not None:
                    remove += old.units
                    self.tokens -= len(old.tokens)
                    del self.files[path]
                continue
            chunks = split_chunks(content.text)
            hashes = [chunk_hash(chunk) for chunk in chunks]
            old_hashes = old.chunk_hashes if old is not None else []
            prefix = 0
            limit = min(len(hashes), len(old_hashes))
            while prefix < limit and hashes[prefix] == old_hashes[prefix]:
                prefix += 1
            suffix = 0
            while suffix < limit - prefix and hashes[-1 - suffix] == old_hashes[-1 - suffix]:
                suffix += 1
            if old is not None and prefix == len(hashes) == len(old_hashes):
                old.stamp = content.stamp
                continue
            if old is None and self.tokens > self.max_tokens:
                if not self._warned_full:
                    log.warning("repository index is full (%d tokens); new files are not indexed", self.tokens)
                    self._warned_full = True
                continue
            plans.append((path, content.stamp, hashes, prefix, suffix, len(texts)))
            texts += chunks[prefix : len(chunks) - suffix]
        encoded = self._encode_all(texts)
        for path, stamp, hashes, prefix, suffix, first in plans:
            changed = encoded[first : first + len(hashes) - prefix - suffix]
            removed, added = self._replace(path, stamp, hashes, prefix, suffix, changed)
            remove += removed
            add += added
        self.index.update(remove, add)

    def restore(self, files: Iterable[tuple[str, np.ndarray, list[bytes], list[int], FileStamp]]) -> None:
        """Install files tokenized earlier (path, tokens, chunk hashes, chunk lengths, stamp)."""
        add = []
        for path, tokens, hashes, lens, stamp in files:
            if path in self.files or len(hashes) != len(lens) or sum(lens) != len(tokens):
                continue
            starts = np.concatenate(([0], np.cumsum(lens, dtype=np.int64))).tolist()
            units = [self._unit(tokens, starts[j], starts[j + 1]) for j in range(len(lens))]
            add += units
            self.files[path] = FileEntry(tokens, list(hashes), list(lens), [u.key for u in units], stamp)
            self.tokens += len(tokens)
        self.index.update((), add)

    def _unit(self, tokens: np.ndarray, start: int, end: int) -> Unit:
        lead, tail = tokens[max(0, start - MAX_K) : start], tokens[end : end + MAX_SPAN]
        return Unit(next(self._keys), lead, tokens[start:end], tail)

    def _replace(self, path: str, stamp: FileStamp | None, hashes: list[bytes], prefix: int, suffix: int,
                 changed: list[np.ndarray]) -> tuple[list[int], list[Unit]]:
        """Splice the changed chunks' tokens into the file; the units to remove and add."""
        old = self.files.get(path)
        old_lens = old.chunk_lens if old is not None else []
        old_units = old.units if old is not None else []
        old_tokens = old.tokens if old is not None else _EMPTY
        kept_head = sum(old_lens[:prefix])
        kept_tail = sum(old_lens[len(old_lens) - suffix :])
        tokens = np.concatenate([old_tokens[:kept_head], *changed, old_tokens[len(old_tokens) - kept_tail :]])
        lens = old_lens[:prefix] + [len(t) for t in changed] + old_lens[len(old_lens) - suffix :]
        new_end = len(hashes) - suffix  # changed chunks are [prefix, new_end) in the new list
        stale = set(range(prefix, new_end))
        # Neighbours whose tail (before) or lead (after) reaches the change within 16 tokens.
        distance, j = 0, prefix - 1
        while j >= 0 and distance < MAX_SPAN:
            stale.add(j)
            distance += lens[j]
            j -= 1
        distance, j = 0, new_end
        while j < len(lens) and distance < MAX_K:
            stale.add(j)
            distance += lens[j]
            j += 1
        units = old_units[:prefix] + [-1] * (new_end - prefix) + old_units[len(old_units) - suffix :]
        removed = list(old_units[prefix : len(old_lens) - suffix])
        starts = np.concatenate(([0], np.cumsum(lens, dtype=np.int64))).tolist()
        added = []
        for j in sorted(stale):
            if units[j] >= 0:
                removed.append(units[j])
            added.append(self._unit(tokens, starts[j], starts[j + 1]))
            units[j] = added[-1].key
        self.tokens += len(tokens) - len(old_tokens)
        self.files[path] = FileEntry(tokens, hashes, lens, units, stamp)
        return removed, added
