"""The seam between the protocol layer and the engine.

The LSP handlers only know these plain types, so they never import torch; the engine
implements :class:`CompletionEngine`.  Tests and other front ends (the CLI, the bench)
use the same contract.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .settings import Settings


@dataclass(frozen=True)
class CompletionRequest:
    """What the editor asks for: the text around the cursor, already split there."""

    prefix: str
    suffix: str
    max_new_tokens: int
    context_tokens: int = Settings.context_tokens
    """Token budget of the prompt; far-away prefix and suffix text is trimmed to fit."""
    language_id: str = ""
    document_key: str = ""
    """Identifies the document (its URI) so that per-document caches do not mix."""


@dataclass
class CompletionStats:
    """Numbers about one completion, shown by ``swiftguard.status`` and the CLI."""

    new_tokens: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0
    reused_prompt_tokens: int = 0
    time_to_first_token: float = 0.0
    forward_passes: int = 0
    source: str = "model"
    """``model``, or ``typeahead`` when answered from the previous completion."""
    stop_reason: str = ""
    speedup_estimate: float | None = None
    """Decoding speed over plain greedy decoding on this device (speculation only)."""

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokens_per_second"] = round(self.tokens_per_second, 2)
        data["accepted_per_pass"] = round(self.new_tokens / self.forward_passes, 2) if self.forward_passes else None
        return data


@dataclass
class CompletionResult:
    text: str
    stats: CompletionStats = field(default_factory=CompletionStats)
    cancelled: bool = False


class CompletionEngine(Protocol):
    """A warm model that completes code; all calls come from one worker thread."""

    def complete(self, request: CompletionRequest, cancel: threading.Event) -> CompletionResult:
        """Complete at the cursor; return early (``cancelled=True``) once ``cancel`` is set."""
        ...

    def describe(self) -> dict[str, Any]:
        """Model, device, dtype and other facts for ``swiftguard.status``."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...

    def encoders(self) -> tuple[Callable[[str], list[int]], Callable[[list[str]], list[list[int]]], str]:
        """(encode, encode_batch, tokenizer key): how the model tokenizes, for the datastore."""
        ...

    def generations_dir(self) -> Path | None:
        """Where the model's own generations are kept for it to draft from (the draft head's
        build shards: ``datastore.generations``); None where there are none."""
        ...

    def attach_retrieval(self, datastore: Any, preference_file: Path | None = None) -> None:
        """Use ``datastore`` (``lsp_server.datastore.Datastore``) as a draft source; keep the
        workspace's preference cache in ``preference_file`` across restarts."""
        ...

    def retrieval_preview(self, prefix: str, limit: int = 8, document_key: str = "",
                          language_id: str = "") -> list[dict[str, Any]]:
        """The datastore's drafts for the text before a cursor in that document, decoded."""
        ...
