"""The datastore as the server runs it: sources kept current on a background thread.

Callers (the LSP event loop, the watcher thread) only record what changed, under a lock
held for microseconds: open editor buffers by path (the latest text wins, the editor's
text wins over the disk's while a document is open) and paths to look at on disk.  One
worker thread coalesces that into batches, re-indexes, publishes a new index snapshot and
then merges segments while nothing is waiting.  File events come from a watchdog
observer or, with ``use_client_watcher``, only from the client's
``workspace/didChangeWatchedFiles``; either way a file is re-read only when its
(mtime, size) differs from what was indexed, so an event reported twice costs one stat.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from . import general, generations
from .cache import short_hash
from .files import IGNORED_DIRS, Workspace
from .persist import load_repository, repository_cache_path, save_repository
from .repository import FileContent, RepositoryIndex
from .sources import Datastore, IndexSource
from .types import Encode, EncodeBatch

log = logging.getLogger(__name__)

_DISK = object()
"""Pending action: look at the file (or folder) on disk."""
_BATCH = 256
_WATCHED_EVENTS = frozenset({"created", "modified", "deleted", "moved", "closed"})


class _EventHandler(FileSystemEventHandler):
    def __init__(self, service: DatastoreService) -> None:
        self.service = service

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _WATCHED_EVENTS or (event.is_directory and event.event_type == "modified"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        self.service.files_changed([os.fsdecode(p) for p in paths if p])


class DatastoreService:
    """The repository and general-corpus sources of one workspace, and their upkeep."""

    def __init__(
        self,
        workspace: Path | None,
        encode: Encode,
        tokenizer_key: str,
        encode_batch: EncodeBatch | None = None,
        *,
        use_client_watcher: bool = False,
        persist: bool = True,
        reuse_saved: bool = True,
        max_file_bytes: int = 1_000_000,
        max_tokens: int = 8_000_000,
        repository_weight: float = 1.0,
        general_weight: float = 0.25,
        generations_weight: float = 0.25,
        general_budget: int = general.DEFAULT_BUDGET,
        save_interval: float = 300.0,
    ) -> None:
        self.workspace = Workspace(workspace, max_file_bytes) if workspace is not None else None
        self.encode = encode
        self.encode_batch = encode_batch
        self.tokenizer_key = tokenizer_key
        self.use_client_watcher = use_client_watcher
        self.persist = persist
        self.reuse_saved = reuse_saved
        self.general_budget = general_budget
        self.general_weight = general_weight
        self.save_interval = save_interval
        self.repository = RepositoryIndex(encode, encode_batch, max_tokens)
        self.repository_source = IndexSource("repository", self.repository.index, repository_weight)
        self.general_sources: dict[str, IndexSource] = {}
        """The general corpora in use, by corpus name (``general.CORPORA``)."""
        self._general_asked: set[str] = set()
        self.generations_weight = generations_weight
        self.generations_sources: dict[str, IndexSource] = {}
        """The model's own generations, by language (``load_generations``)."""
        self.datastore = Datastore((self.repository_source,))
        self.state = "idle"
        self.initial_seconds: float | None = None
        self._cond = threading.Condition()
        self._pending: dict[str, Any] = {}  # rel path -> editor text (str) or _DISK
        self._open: set[str] = set()
        self._rescan = False
        self._busy = False
        self._stopping = False
        self._dirty = False
        self._compact_due = False
        self._last_save = time.monotonic()
        self._thread: threading.Thread | None = None
        self._observer: Any = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker: load the saved index, check it against the disk, index the rest."""
        if self._thread is not None or self.workspace is None:
            return
        self._busy = True
        self._thread = threading.Thread(target=self._run, name="swiftguard-datastore", daemon=True)
        self._thread.start()

    def start_watching(self) -> None:
        """Watch the workspace with watchdog, unless the client's watcher feeds ``files_changed``."""
        if self.workspace is None or self.use_client_watcher or self._observer is not None:
            return
        observer = Observer()
        try:
            observer.schedule(_EventHandler(self), str(self.workspace.root), recursive=True)
            observer.start()
        except OSError as exc:  # e.g. the inotify watch limit
            log.warning("cannot watch %s (%s); only editor changes will be indexed", self.workspace.root, exc)
            return
        self._observer = observer

    def stop_watching(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching and indexing; save the repository index if anything changed."""
        self.stop_watching()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._save(force=True)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending (tests, the CLI); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._busy or self._pending or self._rescan:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    # -- what callers report (never blocks on indexing) --------------------------------

    def open_document(self, path: str | os.PathLike[str], text: str) -> None:
        self._set_text(path, text, opening=True)

    def change_document(self, path: str | os.PathLike[str], text: str) -> None:
        self._set_text(path, text, opening=False)

    def close_document(self, path: str | os.PathLike[str]) -> None:
        """The editor's buffer is gone: the file's disk content counts again."""
        rel = self._relative(path)
        if rel is None:
            return
        with self._cond:
            self._open.discard(rel)
            self._pending[rel] = _DISK
            self._cond.notify_all()

    def files_changed(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Files or folders that may have changed on disk (watcher events)."""
        with self._cond:
            for path in paths:
                rel = self._relative(path)
                if rel is None or not IGNORED_DIRS.isdisjoint(rel.split("/")):
                    continue
                if rel == ".gitignore" or rel.endswith("/.gitignore"):
                    self._rescan = True
                elif rel not in self._open:
                    self._pending[rel] = _DISK
            self._cond.notify_all()

    def _relative(self, path: str | os.PathLike[str]) -> str | None:
        if self.workspace is None:
            return None
        return self.workspace.relative(os.fspath(path))

    def _set_text(self, path: str | os.PathLike[str], text: str, opening: bool) -> None:
        rel = self._relative(path)
        if rel is None:
            return
        with self._cond:
            if opening or rel in self._open:
                self._open.add(rel)
                self._pending[rel] = text
                self._cond.notify_all()

    # -- the general corpus ----------------------------------------------------------------

    def want_general(self, language: str | None) -> str | None:
        """The general corpus to load or build for a document in ``language``: its name the
        first time it is asked for, None when there is none or it was asked for already."""
        corpus = general.corpus_for(language)
        if corpus is None:
            return None
        with self._cond:
            if corpus.name in self._general_asked:
                return None
            self._general_asked.add(corpus.name)
        return corpus.name

    def load_general(self, name: str = "python") -> bool:
        """Use corpus ``name``'s index from the cache if it was built; True if it was."""
        corpus = general.CORPORA[name]
        return self._load_cached(corpus, corpus.roots())

    def _load_cached(self, corpus: general.Corpus, roots: list[Path]) -> bool:
        segment = general.load(general.cache_path(self.tokenizer_key, corpus, roots, self.general_budget)) \
            if roots else None
        if segment is not None:
            self.use_general(corpus, segment)
        return segment is not None

    def build_general(self, progress: general.Progress | None = None, name: str = "python",
                      exclude: Path | None = None) -> bool:
        """Build (or load) corpus ``name``'s index and use it; False (logged) when it is not
        on this machine, contains ``exclude`` (a benchmarked repository) or fails."""
        corpus = general.CORPORA[name]
        roots = corpus.roots()
        if exclude is not None and any(root.resolve().is_relative_to(exclude.resolve())
                                       or exclude.resolve().is_relative_to(root.resolve()) for root in roots):
            log.warning("general corpus %s is left out: it overlaps %s", name, exclude)
            return False
        if self._load_cached(corpus, roots):
            return True
        files = [path for root in roots for path in general.corpus_files(root, corpus)]
        if not files:
            log.info("no %s general corpus on this machine", name)
            return False
        try:
            segment = general.build(self.encode, self.encode_batch, files, self.general_budget, progress)
        except Exception:
            log.exception("building the %s general corpus index failed", name)
            return False
        if segment is None:
            log.warning("the %s general corpus under %s has no readable files", name, roots)
            return False
        self.use_general(corpus, segment)
        try:
            general.save(general.cache_path(self.tokenizer_key, corpus, roots, self.general_budget), segment,
                         {"tokenizer_key": self.tokenizer_key, "corpus": name, "roots": [str(r) for r in roots]})
        except OSError as exc:
            log.warning("cannot save the %s general corpus index: %s", name, exc)
        return True

    def use_general(self, corpus: general.Corpus, segment: general.Segment) -> None:
        """Draft from ``segment`` (an index of ``corpus``) for documents in its languages."""
        source = IndexSource("general", general.as_index(segment), self.general_weight)
        self.general_sources[corpus.name] = source
        for language in corpus.languages:
            self.datastore.add_for_language(language, source)

    def load_generations(self, shard_dir: Path, keep_repo: Callable[[str], bool]) -> int:
        """Draft from the model's own generations in ``shard_dir`` (``datastore.generations``),
        leaving out the repositories ``keep_repo`` rejects; returns the tokens indexed."""
        indexes = generations.load_generations(shard_dir, keep_repo)
        for language, index in indexes.items():
            source = IndexSource("generations", index, self.generations_weight)
            self.generations_sources[language] = source
            self.datastore.add_for_language(language, source)
        tokens = sum(index.tokens for index in indexes.values())
        if tokens:
            log.info("drafting from %d tokens of the model's own generations in %s", tokens, shard_dir)
        return tokens

    # -- the worker ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "files": len(self.repository.files),
            "tokens": self.repository.tokens,
            "index_bytes": self.repository.index.nbytes,
            "segments": len(self.repository.index.segments),
            "pending": len(self._pending),
            "initial_seconds": self.initial_seconds,
            "general_tokens": sum(source.index.tokens for source in self.general_sources.values()),
            "general_bytes": sum(source.index.nbytes for source in self.general_sources.values()),
            "general_corpora": {name: source.index.tokens for name, source in self.general_sources.items()},
            "generations_tokens": {language: source.index.tokens
                                   for language, source in self.generations_sources.items()},
        }

    def _run(self) -> None:
        try:
            self.state = "indexing"
            started = time.perf_counter()
            self._initial_scan()
            self._drain()
            self.initial_seconds = time.perf_counter() - started
            self._save(force=True)
        except Exception:
            log.exception("indexing %s failed", self.workspace.root if self.workspace else None)
        self.state = "ready"
        self._drain(forever=True)

    def _drain(self, forever: bool = False) -> None:
        """Process pending work; return when there is none left or, with ``forever``, on stop."""
        while True:
            batch, rescan = self._next_batch(forever)
            if batch is None:
                return
            try:
                if rescan:
                    self._initial_scan()
                if batch:
                    self._process(batch)
                elif not rescan and not self.repository.index.compact():
                    self._compact_due = False
                    self._save()
            except Exception:
                log.exception("datastore update failed; the index keeps its previous state")

    def _next_batch(self, forever: bool) -> tuple[dict[str, Any] | None, bool]:
        """(batch, rescan); an empty batch means idle-time work (merging, saving); None: return."""
        with self._cond:
            while not (self._pending or self._rescan or self._stopping):
                if self._compact_due or (self._dirty and time.monotonic() - self._last_save > self.save_interval):
                    return {}, False
                if not forever:
                    return None, False
                self._busy = False
                self._cond.notify_all()
                self._cond.wait(self.save_interval)
            if self._stopping:
                self._busy = False
                self._cond.notify_all()
                return None, False
            self._busy = True
            rescan, self._rescan = self._rescan, False
            batch = {rel: self._pending.pop(rel) for rel in list(self._pending)[:_BATCH]}
            return batch, rescan

    def _initial_scan(self) -> None:
        """Queue every indexable file, and forget indexed files that are gone or now ignored."""
        workspace = self.workspace
        assert workspace is not None
        workspace.invalidate_ignores()
        if self.persist and self.reuse_saved and not self.repository.files:
            saved = load_repository(repository_cache_path(workspace.root, self.tokenizer_key), workspace.root,
                                    self.tokenizer_key)
            self.repository.restore((rel, f.tokens, f.chunk_hashes, f.chunk_lens, f.stamp) for rel, f in saved.items())
        seen = set()
        for rel in workspace.walk():
            seen.add(rel)
            with self._cond:
                if rel not in self._open and rel not in self._pending:
                    self._pending[rel] = _DISK
        gone = {rel: None for rel in self.repository.files if rel not in seen and rel not in self._open}
        if gone:
            self.repository.apply(gone)
            self._dirty = self._compact_due = True

    def _process(self, batch: dict[str, Any]) -> None:
        workspace = self.workspace
        assert workspace is not None
        changes: dict[str, FileContent | None] = {}
        for rel, action in batch.items():
            if action is not _DISK:
                if workspace.wanted(rel):
                    changes[rel] = FileContent(action, None)
                continue
            if rel in self._open:
                continue  # the editor's text wins until the document is closed
            info = workspace.stat(rel)
            if info is None:
                changes.update(self._vanished(rel))
            elif stat.S_ISDIR(info.st_mode):
                self._expand(rel)
            elif not stat.S_ISREG(info.st_mode) or not workspace.wanted(rel):
                if rel in self.repository.files:
                    changes[rel] = None
            else:
                entry = self.repository.files.get(rel)
                stamp = entry.stamp if entry is not None else None
                if stamp is not None and (stamp.mtime_ns, stamp.size) == (info.st_mtime_ns, info.st_size):
                    continue  # already indexed as it is (an event reported twice)
                content = workspace.read(rel)
                if content is not None and stamp is not None and content.stamp.digest == stamp.digest:
                    entry.stamp = content.stamp  # touched, not changed
                    continue
                changes[rel] = content
        if changes:
            self.repository.apply(changes)
            self._dirty = self._compact_due = True

    def _vanished(self, rel: str) -> dict[str, None]:
        """A path that no longer exists: a file, or a folder with indexed files under it."""
        prefix = rel + "/"
        return {path: None for path in self.repository.files
                if (path == rel or path.startswith(prefix)) and path not in self._open}

    def _expand(self, rel: str) -> None:
        """A folder appeared or moved in: queue its files."""
        workspace = self.workspace
        assert workspace is not None
        if workspace.is_ignored(rel, is_dir=True) or workspace.relative(rel) != rel:
            return
        for path in workspace.walk(rel):
            with self._cond:
                if path not in self._open:
                    self._pending.setdefault(path, _DISK)

    def _save(self, force: bool = False) -> None:
        """Save if anything changed, at most every ``save_interval`` seconds unless forced."""
        if not self.persist or self.workspace is None:
            self._dirty = False  # nothing will ever save it: idle work must not come back for it
            return
        if not self._dirty:
            return
        if not force and time.monotonic() - self._last_save < self.save_interval:
            return
        path = repository_cache_path(self.workspace.root, self.tokenizer_key)
        self._last_save = time.monotonic()  # also after a failure: retry only after the interval
        try:
            count = save_repository(path, self.workspace.root, self.tokenizer_key, self.repository)
        except OSError as exc:
            log.warning("cannot save the repository index to %s: %s", path, exc)
            return
        self._dirty = False
        log.info("saved the repository index of %s (%d files) to %s", self.workspace.root, count, path)


def hf_encoders(tokenizer: Any) -> tuple[Encode, EncodeBatch]:
    """``encode`` and ``encode_batch`` for a Hugging Face tokenizer, exactly as prompts are built
    (no special tokens added; a special token's text in a file stays text)."""

    def encode_batch(texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def encode(text: str) -> list[int]:
        return encode_batch([text])[0]

    return encode, encode_batch


def hf_tokenizer_key(tokenizer: Any) -> str:
    """A persistence key that changes whenever the tokenization would."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return f"{type(tokenizer).__name__}-{len(tokenizer)}-{short_hash(spec)}"

