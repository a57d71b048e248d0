"""Where Swiftguard keeps what it builds once: converted models, indexes, calibrations."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def cache_root() -> Path:
    """``SWIFTGUARD_CACHE_DIR`` overrides the user cache dir."""
    return Path(os.environ.get("SWIFTGUARD_CACHE_DIR") or user_cache_dir("swiftguard"))
