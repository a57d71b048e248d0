"""Where the datastore persists its indexes: the same root as the converted models."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..paths import cache_root


def datastore_dir() -> Path:
    return cache_root() / "datastore"


def short_hash(*parts: str) -> str:
    """A file-name-safe key for arbitrary strings (paths, tokenizer keys)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:20]
