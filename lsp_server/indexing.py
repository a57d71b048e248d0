"""Keeps the workspace datastore in step with the editor and the disk, for the server.

The datastore tokenizes with the loaded model's tokenizer, so it is (re)built whenever a
model with a different tokenizer becomes ready.  Document events only queue work for
the datastore's own thread: nothing here blocks the event loop.  Only ``file:`` URIs
inside the workspace root are indexed; the datastore refuses anything outside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pygls.uris import to_fs_path

from .api import CompletionEngine
from .datastore.cache import short_hash
from .datastore.service import DatastoreService
from .drafthead.provenance import other_repository
from .paths import cache_root
from .syntax.languages import detect_language

log = logging.getLogger(__name__)


class WorkspaceIndexer:
    def __init__(self) -> None:
        self.service: DatastoreService | None = None
        self.root: Path | None = None
        self.use_client_watcher = False
        self.general_enabled = True
        """Whether documents bring in the general code of their language (the ``generalCorpus`` setting)."""
        self._build_general: Callable[[DatastoreService, str], None] = lambda _service, _name: None

    def attach(self, engine: CompletionEngine, root: Path | None,
               build_general: Callable[[DatastoreService, str], None]) -> None:
        """Give ``engine`` a datastore for ``root`` that speaks its tokenizer (called on the loading thread).

        ``build_general(service, corpus)`` loads or builds a general corpus in the
        background; it is asked for when the first document of its language opens.
        """
        self._build_general = build_general
        encode, encode_batch, key = engine.encoders()
        if self.service is None or self.service.tokenizer_key != key or self.root != root:
            self.stop()
            self.root = root
            self.service = DatastoreService(root, encode, key, encode_batch, use_client_watcher=self.use_client_watcher)
            self.service.start()
            if (generations := engine.generations_dir()) is not None:
                self.service.load_generations(generations, other_repository(root))
            if not self.use_client_watcher:
                self.service.start_watching()
        preference = cache_root() / "preference" / f"{short_hash(str(root), key)}.json"
        engine.attach_retrieval(self.service.datastore, preference)

    def _path(self, uri: str) -> str | None:
        return to_fs_path(uri) if uri.startswith("file:") else None

    def opened(self, uri: str, text: str, language_id: str = "") -> None:
        if self.service is None:
            return
        if (path := self._path(uri)) is not None:
            self.service.open_document(path, text)
        self.ask_general(uri, language_id)

    def ask_general(self, uri: str, language_id: str = "") -> None:
        """Load or build the general corpus of the document's language, once, if enabled."""
        if self.service is None or not self.general_enabled:
            return
        if (corpus := self.service.want_general(detect_language(uri, language_id))) is not None:
            self._build_general(self.service, corpus)

    def changed(self, uri: str, text: str) -> None:
        if self.service is not None and (path := self._path(uri)) is not None:
            self.service.change_document(path, text)

    def closed(self, uri: str) -> None:
        if self.service is not None and (path := self._path(uri)) is not None:
            self.service.close_document(path)

    def files_changed(self, uris: list[str]) -> None:
        if self.service is not None:
            self.service.files_changed([path for uri in uris if (path := self._path(uri)) is not None])

    def stats(self) -> dict[str, Any] | None:
        return self.service.stats() if self.service is not None else None

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None
