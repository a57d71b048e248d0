"""The language server: thin LSP handlers over the scheduler and the engine host.

No torch here.  Handlers validate input, cut the document at the cursor and hand a
:class:`~lsp_server.api.CompletionRequest` to the scheduler; anything that goes wrong
becomes an empty result and a log line, never a dead server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from . import __version__
from .api import CompletionRequest, CompletionResult, CompletionStats
from .documents import Cursor, looks_binary, split_at
from .engine_host import EngineFactory, EngineHost, EngineState, load_local_engine
from .indexing import WorkspaceIndexer
from .scheduler import CompletionScheduler
from .settings import SECTION, Settings, apply_settings, settings_as_json

log = logging.getLogger(__name__)

STATUS_COMMAND = "swiftguard.status"
RESTART_COMMAND = "swiftguard.restart"
RETRIEVE_COMMAND = "swiftguard.retrieve"
MAX_DOCUMENT_CHARS = 20_000_000
_ENCODINGS = {"utf-8": "utf-8", "utf-16": "utf-16", "utf-32": "utf-32"}
T = TypeVar("T")


def in_background(func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``func(*args)`` in a daemon thread, awaited on the running loop.

    Not the loop's default executor: the interpreter joins its threads at exit, so an
    ``exit`` notification waited for whatever load or index build was running (the
    general-code index took 8 s on an idle 2-core CPU, over 10 s on a busy one) and
    editors, which give a server a few seconds, killed it.  Nothing these jobs do needs finishing before the
    process ends: caches are written atomically.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = func(*args)
        except BaseException as exc:  # handed to the awaiting coroutine, which logs or raises it
            outcome = partial(future.set_exception, exc)
        else:
            outcome = partial(future.set_result, result)
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:  # the loop closed while this ran: nobody is waiting any more
            pass

    threading.Thread(target=run, name=f"swiftguard-{getattr(func, '__name__', 'job')}", daemon=True).start()
    return future


class SwiftguardServer(LanguageServer):
    def __init__(self, engine_factory: EngineFactory = load_local_engine) -> None:
        super().__init__("swiftguard", __version__)
        self.settings = Settings()
        self.host = EngineHost(engine_factory)
        self.scheduler = CompletionScheduler(self._run_completion)
        self.indexer = WorkspaceIndexer()
        self.last_stats: CompletionStats | None = None
        self._load_task: asyncio.Future[None] | None = None  # held: asyncio keeps only weak refs
        self._general_tasks: list[asyncio.Future[None]] = []  # kept referenced until done
        self.pending_errors: list[str] = []
        self.shutting_down = False

    # -- completions -------------------------------------------------------------------

    def _run_completion(self, request: CompletionRequest, cancel: Any) -> CompletionResult:
        engine = self.host.engine
        if engine is None:
            return CompletionResult("", cancelled=True)
        return engine.complete(request, cancel)

    def cursor_for(self, uri: str, position: types.Position) -> tuple[Cursor, int] | None:
        """The open document split at ``position`` and its version; None if unusable."""
        document = self.workspace.text_documents.get(uri)
        if document is None:
            log.info("completion for a document that is not open: %s", uri)
            return None
        source = document.source
        if len(source) > MAX_DOCUMENT_CHARS or looks_binary(source):
            log.info("not completing in %s: binary or larger than %d characters", uri, MAX_DOCUMENT_CHARS)
            return None
        encoding = _ENCODINGS.get(str(self.workspace.position_encoding), "utf-16")
        cursor = split_at(source, position.line, position.character, encoding)
        if cursor is None:
            log.info("position %s is past the end of %s", position, uri)
            return None
        return cursor, document.version or 0

    async def complete_at(self, uri: str, position: types.Position) -> tuple[str, Cursor] | None:
        """Run one completion; None when there is nothing (useful) to show."""
        if not self.settings.enable or self.host.state is not EngineState.READY:
            return None
        found = self.cursor_for(uri, position)
        if found is None:
            return None
        cursor, version = found
        request = CompletionRequest(
            prefix=cursor.prefix,
            suffix=cursor.suffix,
            max_new_tokens=self.settings.max_new_tokens,
            context_tokens=self.settings.context_tokens,
            language_id=self.workspace.text_documents[uri].language_id or "",
            document_key=uri,
        )
        result = await self.scheduler.submit(request)
        if result is None:
            return None
        self.last_stats = result.stats
        document = self.workspace.text_documents.get(uri)
        if document is None or (document.version or 0) != version:
            log.debug("document changed while completing; dropping the result")
            return None
        return (result.text, cursor) if result.text else None

    # -- model life cycle --------------------------------------------------------------

    def start_loading(self) -> None:
        """(Re)load the model in the background, reporting ``$/progress`` to the client."""
        if not self.settings.enable:
            self.host.disable()
            return
        self.scheduler.cancel_all()
        self._load_task = asyncio.ensure_future(self._load(self.settings))

    def _reporter(self, token: str | None) -> Callable[[str, int | None], None]:
        """A thread-safe ``(message, percentage)`` callback reporting ``$/progress`` on ``token``."""
        loop = asyncio.get_running_loop()

        def report(message: str, percentage: int | None = None) -> None:
            log.info("%s", message)
            if token is not None and not self.shutting_down:
                value = types.WorkDoneProgressReport(message=message, percentage=percentage)
                loop.call_soon_threadsafe(self.work_done_progress.report, token, value)

        return report

    async def _load(self, settings: Settings) -> None:
        loop = asyncio.get_running_loop()
        token = await self._begin_progress("Swiftguard: loading model")
        error = await in_background(self.host.load, settings, self._reporter(token))
        if token is not None:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=error or "ready"))
        if error is not None:
            self.notify_user(f"Swiftguard could not load the model: {error}", types.MessageType.Error)
            return
        log.info("model ready: %s", self.host.describe())
        engine = self.host.engine
        if engine is not None and settings.speculation:
            build_general = partial(loop.call_soon_threadsafe, self._build_general_soon)
            self.indexer.general_enabled = settings.general_corpus
            await in_background(self.indexer.attach, engine, self.workspace_root(), build_general)
            for document in list(self.workspace.text_documents.values()):  # opened while loading
                self.indexer.opened(document.uri, document.source, document.language_id or "")

    def workspace_root(self) -> Path | None:
        """The folder whose files feed the repository datastore (none: only open documents)."""
        root = self.workspace.root_path
        if root is None and self.workspace.folders:
            root = to_fs_path(next(iter(self.workspace.folders.values())).uri)
        return Path(root) if root else None

    def _build_general_soon(self, service: Any, corpus: str) -> None:
        self._general_tasks.append(asyncio.ensure_future(self._build_general(service, corpus)))

    async def _build_general(self, service: Any, corpus: str) -> None:
        """Load a general code corpus, or index it once (persisted) with ``$/progress``."""
        if await in_background(service.load_general, corpus):
            return
        token = await self._begin_progress(f"Swiftguard: indexing general {corpus} code")
        report = self._reporter(token)

        def progress(done: int, total: int) -> None:
            report(f"{done:,} of {total:,} tokens", min(100, done * 100 // max(total, 1)))

        built = await in_background(service.build_general, progress, corpus)
        if token is not None and not self.shutting_down:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="done" if built else "failed"))

    async def _begin_progress(self, title: str) -> str | None:
        window = self.client_capabilities.window
        if window is None or not window.work_done_progress:
            return None
        token = f"swiftguard-load-{uuid.uuid4().hex[:8]}"
        try:
            await self.work_done_progress.create_async(token)
        except Exception:
            log.warning("client refused a progress token", exc_info=True)
            return None
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=title, cancellable=False))
        return token

    # -- settings ------------------------------------------------------------------------

    def update_settings(self, raw: Any) -> None:
        """Apply user JSON; report problems; reload the model if its settings changed."""
        before = self.settings
        update = apply_settings(before, raw)
        self.settings = update.settings
        for error in update.errors:
            self.notify_user(f"Swiftguard: {error}", types.MessageType.Warning)
        logging.getLogger("lsp_server").setLevel(self.settings.log_level.upper())
        if before.engine_key() != self.settings.engine_key() or before.enable != self.settings.enable:
            self.start_loading()
        elif self.settings.general_corpus != before.general_corpus:
            self.indexer.general_enabled = self.settings.general_corpus
            for document in list(self.workspace.text_documents.values()):
                self.indexer.ask_general(document.uri, document.language_id or "")

    def notify_user(self, message: str, kind: types.MessageType) -> None:
        log.log(logging.WARNING if kind <= types.MessageType.Warning else logging.INFO, "%s", message)
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "engine": self.host.describe(),
            "settings": settings_as_json(self.settings),
            "requests": dict(self.scheduler.counts),
            "datastore": self.indexer.stats(),
            "last_completion": self.last_stats.as_json() if self.last_stats else None,
        }


server = SwiftguardServer()


@server.feature(types.INITIALIZE)
def on_initialize(ls: SwiftguardServer, params: types.InitializeParams) -> None:
    update = apply_settings(ls.settings, params.initialization_options)
    ls.settings = update.settings
    ls.pending_errors = update.errors  # shown once the client can take notifications


@server.feature(types.INITIALIZED)
async def on_initialized(ls: SwiftguardServer, _params: types.InitializedParams) -> None:
    for error in ls.pending_errors:
        ls.notify_user(f"Swiftguard: {error}", types.MessageType.Warning)
    logging.getLogger("lsp_server").setLevel(ls.settings.log_level.upper())
    ls.start_loading()
    await register_file_watcher(ls)


async def register_file_watcher(ls: SwiftguardServer) -> None:
    """Let the client watch files when it can (one watcher fewer); else the datastore's own does."""
    workspace = ls.client_capabilities.workspace
    watched = workspace.did_change_watched_files if workspace else None
    if watched is None or not watched.dynamic_registration:
        return
    options = types.DidChangeWatchedFilesRegistrationOptions(watchers=[types.FileSystemWatcher(glob_pattern="**/*")])
    try:
        await ls.client_register_capability_async(types.RegistrationParams(registrations=[
            types.Registration(id="swiftguard-files", method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
                               register_options=options)
        ]))
    except Exception:
        log.warning("client refused file watching; using our own watcher", exc_info=True)
        return
    ls.indexer.use_client_watcher = True


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def on_configuration(ls: SwiftguardServer, params: types.DidChangeConfigurationParams) -> None:
    raw = params.settings
    if not raw:
        # Pull-style clients send null and expect the server to ask for its section.
        workspace = ls.client_capabilities.workspace
        if workspace is None or not workspace.configuration:
            return
        try:
            pulled = await ls.workspace_configuration_async(
                types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
            )
        except Exception:
            log.warning("workspace/configuration failed", exc_info=True)
            return
        raw = pulled[0] if pulled else None
    ls.update_settings(raw)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def on_inline_completion(
    ls: SwiftguardServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    found = await ls.complete_at(params.text_document.uri, params.position)
    if found is None:
        return types.InlineCompletionList(items=[])
    text, _cursor = found
    position = params.position
    return types.InlineCompletionList(
        items=[
            types.InlineCompletionItem(
                insert_text=text, range=types.Range(start=position, end=position)
            )
        ]
    )


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[]))
async def on_completion(ls: SwiftguardServer, params: types.CompletionParams) -> types.CompletionList:
    """Fallback for clients without inline completion: one item holding the whole suggestion.

    The edit starts at the word being typed so that clients filtering by that word keep it.
    """
    found = await ls.complete_at(params.text_document.uri, params.position)
    if found is None:
        return types.CompletionList(is_incomplete=True, items=[])
    text, cursor = found
    start = types.Position(line=params.position.line, character=params.position.character - len(cursor.word))
    new_text = cursor.word + text
    first_line = new_text.split("\n", 1)[0].strip() or new_text.strip()
    item = types.CompletionItem(
        label=first_line[:80],
        kind=types.CompletionItemKind.Text,
        detail="Swiftguard",
        documentation=types.MarkupContent(kind=types.MarkupKind.Markdown, value=f"```\n{new_text}\n```"),
        filter_text=new_text,
        sort_text="0",
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(range=types.Range(start=start, end=params.position), new_text=new_text),
    )
    return types.CompletionList(is_incomplete=True, items=[item])


@server.command(STATUS_COMMAND)
def on_status(ls: SwiftguardServer, *_args: Any) -> dict[str, Any]:
    return ls.status()


@server.command(RETRIEVE_COMMAND)
async def on_retrieve(ls: SwiftguardServer, uri: str, line: int, character: int) -> dict[str, Any]:
    """The drafts the datastore offers at a position: shows what speculation can use there."""
    engine = ls.host.engine
    found = ls.cursor_for(uri, types.Position(line=line, character=character))
    if engine is None or found is None:
        return {"candidates": []}
    language_id = ls.workspace.text_documents[uri].language_id or ""
    preview = await ls.scheduler.call_on_worker(lambda: engine.retrieval_preview(found[0].prefix, 8, uri, language_id))
    return {"candidates": preview}


@server.command(RESTART_COMMAND)
def on_restart(ls: SwiftguardServer, *_args: Any) -> dict[str, Any]:
    ls.start_loading()
    return {"state": str(ls.host.state)}


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def on_did_open(ls: SwiftguardServer, params: types.DidOpenTextDocumentParams) -> None:
    document = params.text_document
    ls.indexer.opened(document.uri, document.text, document.language_id)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def on_did_change(ls: SwiftguardServer, params: types.DidChangeTextDocumentParams) -> None:
    document = ls.workspace.text_documents.get(params.text_document.uri)
    if document is not None:  # pygls has applied the change already
        ls.indexer.changed(document.uri, document.source)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def on_did_close(ls: SwiftguardServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.indexer.closed(params.text_document.uri)


@server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
def on_watched_files(ls: SwiftguardServer, params: types.DidChangeWatchedFilesParams) -> None:
    ls.indexer.files_changed([change.uri for change in params.changes])


@server.feature(types.SHUTDOWN)
def on_shutdown(ls: SwiftguardServer, _params: None) -> None:
    ls.shutting_down = True
    ls.scheduler.shutdown()
    ls.indexer.stop()
    ls.host.disable()
