"""Owns the engine's life cycle for the server: load in the background, reload, report.

The protocol layer must stay responsive and free of torch, so the engine package is only
imported inside the loading thread.  Requests that arrive before the model is ready are
answered empty at once instead of waiting.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .api import CompletionEngine
from .settings import Settings

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings, Callable[[str], None]], CompletionEngine]


def load_local_engine(settings: Settings, progress: Callable[[str], None]) -> CompletionEngine:
    from .engine import build_engine  # imports torch: only ever on the loading thread

    return build_engine(
        settings.model, settings.device, settings.dtype, settings.trust_remote_code, settings.speculation,
        settings.genguard, progress, self_draft=settings.self_draft,
    )


class EngineState(enum.StrEnum):
    DISABLED = "disabled"
    LOADING = "loading"
    READY = "ready"
    ERROR = "error"


class EngineHost:
    """Holds at most one engine; loads replace it atomically."""

    def __init__(self, factory: EngineFactory = load_local_engine) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._generation = 0
        self.engine: CompletionEngine | None = None
        self.state = EngineState.DISABLED
        self.error: str | None = None
        self.load_seconds: float | None = None

    def load(self, settings: Settings, progress: Callable[[str], None]) -> str | None:
        """Load (blocking; call from a worker thread); returns an error message or None.

        A newer ``load`` started meanwhile wins: an older one that finishes late drops its
        engine instead of replacing the newer one.
        """
        with self._lock:
            self._generation += 1
            generation = self._generation
            self.state = EngineState.LOADING
            self.error = None
            old, self.engine = self.engine, None
        if old is not None:
            old.close()
        started = time.perf_counter()
        try:
            engine = self._factory(settings, progress)
        except Exception as exc:  # any failure is reported to the user; the server stays up
            log.exception("model load failed")
            with self._lock:
                if generation == self._generation:
                    self.state, self.error = EngineState.ERROR, str(exc)
            return str(exc)
        with self._lock:
            if generation != self._generation:
                engine.close()
                return None
            self.engine, self.state = engine, EngineState.READY
            self.load_seconds = time.perf_counter() - started
        return None

    def disable(self) -> None:
        with self._lock:
            self._generation += 1
            old, self.engine = self.engine, None
            self.state, self.error = EngineState.DISABLED, None
        if old is not None:
            old.close()

    def describe(self) -> dict[str, Any]:
        engine = self.engine
        data: dict[str, Any] = {"state": str(self.state)}
        if self.error:
            data["error"] = self.error
        if engine is not None:
            data.update(engine.describe())
        return data
