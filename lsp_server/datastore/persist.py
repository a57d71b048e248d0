"""Saving a workspace's file tokens in the cache dir (numpy ``.npz``, never pickle).

What is saved is each file's tokens per chunk and its disk stamp (mtime, size, digest);
the index itself is rebuilt from the tokens on load (about half a second per million
tokens), which keeps the format independent of the index's internals.  Only text read
from disk is saved, never an editor's unsaved buffer.  Anything unexpected in a saved
file makes it ignored (logged), never trusted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import write_atomically
from .cache import datastore_dir, short_hash
from .repository import FileStamp, RepositoryIndex

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass
class SavedFile:
    tokens: np.ndarray
    chunk_hashes: list[bytes]
    chunk_lens: list[int]
    stamp: FileStamp


def repository_cache_path(root: Path, tokenizer_key: str) -> Path:
    return datastore_dir() / "repository" / f"{short_hash(str(root), tokenizer_key)}.npz"


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: a reader (or a crash) never sees half a file."""
    write_atomically(path, lambda handle: np.savez(handle, **arrays))


def save_repository(path: Path, root: Path, tokenizer_key: str, repository: RepositoryIndex) -> int:
    """Save the disk-read files of ``repository``; returns how many."""
    entries = [(rel, entry) for rel, entry in repository.files.items() if entry.stamp is not None]
    meta = {
        "format": FORMAT,
        "root": str(root),
        "tokenizer_key": tokenizer_key,
        "paths": [rel for rel, _ in entries],
        "digests": [entry.stamp.digest for _, entry in entries],
    }
    hashes = [h for _, entry in entries for h in entry.chunk_hashes]
    arrays = {
        "meta": np.array(json.dumps(meta)),
        "tokens": np.concatenate([entry.tokens for _, entry in entries]) if entries else np.zeros(0, np.uint32),
        "chunk_lens": np.array([n for _, entry in entries for n in entry.chunk_lens], dtype=np.int64),
        "chunk_hashes": np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), 8),
        "file_chunks": np.array([len(entry.chunk_lens) for _, entry in entries], dtype=np.int64),
        "stamps": np.array([(entry.stamp.mtime_ns, entry.stamp.size) for _, entry in entries],
                           dtype=np.int64).reshape(-1, 2),
    }
    write_npz(path, arrays)
    return len(entries)


def load_repository(path: Path, root: Path, tokenizer_key: str) -> dict[str, SavedFile]:
    """The saved files, or {} when there is none or it does not fit this workspace."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if (meta.get("format"), meta.get("root"), meta.get("tokenizer_key")) != (FORMAT, str(root), tokenizer_key):
                log.info("ignoring %s: saved for another workspace, tokenizer or format", path)
                return {}
            tokens = data["tokens"].astype(np.uint32, copy=False)
            chunk_lens = data["chunk_lens"].tolist()
            chunk_hashes = [bytes(row) for row in data["chunk_hashes"]]
            file_chunks = data["file_chunks"].tolist()
            stamps = data["stamps"].tolist()
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable datastore cache %s: %s", path, exc)
        return {}
    paths, digests = meta["paths"], meta["digests"]
    if not (len(paths) == len(digests) == len(file_chunks) == len(stamps)) or sum(file_chunks) != len(chunk_lens) \
            or len(chunk_hashes) != len(chunk_lens) or sum(chunk_lens) != len(tokens):
        log.warning("ignoring inconsistent datastore cache %s", path)
        return {}
    saved = {}
    chunk, offset = 0, 0
    for rel, digest, count, (mtime_ns, size) in zip(paths, digests, file_chunks, stamps):
        lens = chunk_lens[chunk : chunk + count]
        length = sum(lens)
        saved[rel] = SavedFile(tokens[offset : offset + length], chunk_hashes[chunk : chunk + count], lens,
                               FileStamp(mtime_ns, size, digest))
        chunk += count
        offset += length
    return saved
