"""Where Swiftguard keeps what it builds once: converted models, indexes, calibrations."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from platformdirs import user_cache_dir


def cache_root() -> Path:
    """``SWIFTGUARD_CACHE_DIR`` overrides the user cache dir."""
    return Path(os.environ.get("SWIFTGUARD_CACHE_DIR") or user_cache_dir("swiftguard"))


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file beside it: a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
