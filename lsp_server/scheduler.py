"""One model, many requests: latest-wins scheduling with cooperative cancellation.

The model runs on a single worker thread (one forward pass at a time is all a CPU can
do well).  Each request gets a ``threading.Event`` that the decoding loop checks every
step, so a ``$/cancelRequest`` or a newer request for the same document stops the model
within one step.  A request whose event is set before its turn never touches the model
(pygls still dispatches requests cancelled while queued, pygls#517).  Some clients
(Neovim 0.12) never cancel, so supersession does not rely on the client.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .api import CompletionRequest, CompletionResult

log = logging.getLogger(__name__)

Runner = Callable[[CompletionRequest, threading.Event], CompletionResult]


@dataclass
class _Ticket:
    cancel: threading.Event = field(default_factory=threading.Event)


class CompletionScheduler:
    """Runs completion jobs one at a time; newer requests for a document cancel older ones."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swiftguard-model")
        self._latest: dict[str, _Ticket] = {}
        self.counts: Counter[str] = Counter()

    async def submit(self, request: CompletionRequest) -> CompletionResult | None:
        """Complete ``request``; None when it was superseded, cancelled or failed.

        Raises ``asyncio.CancelledError`` when the awaiting task is cancelled (the client
        sent ``$/cancelRequest``); the model is told to stop at its next step.
        """
        self.counts["requests"] += 1
        ticket = _Ticket()
        previous = self._latest.get(request.document_key)
        if previous is not None and not previous.cancel.is_set():
            previous.cancel.set()
            self.counts["superseded"] += 1
        self._latest[request.document_key] = ticket
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, self._run, ticket, request)
        except asyncio.CancelledError:
            ticket.cancel.set()
            self.counts["cancelled"] += 1
            raise
        finally:
            if self._latest.get(request.document_key) is ticket:
                del self._latest[request.document_key]
        if result is None or result.cancelled:
            return None
        self.counts["completed"] += 1
        return result

    def _run(self, ticket: _Ticket, request: CompletionRequest) -> CompletionResult | None:
        if ticket.cancel.is_set():
            self.counts["skipped_before_start"] += 1
            return None
        try:
            return self._runner(request, ticket.cancel)
        except Exception:
            # A failing completion must never take the server down; the user sees nothing
            # inserted and the log says why.
            log.exception("completion failed")
            self.counts["errors"] += 1
            return None

    def cancel_all(self) -> None:
        for ticket in self._latest.values():
            ticket.cancel.set()

    def call_on_worker(self, func: Callable[[], object]) -> "asyncio.Future[object]":
        """Run ``func`` on the model thread, after the jobs queued before it."""
        return asyncio.get_running_loop().run_in_executor(self._executor, func)

    def shutdown(self) -> None:
        self.cancel_all()
        self._executor.shutdown(wait=False, cancel_futures=True)
