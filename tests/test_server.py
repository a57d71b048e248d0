"""End to end: the real server in a subprocess, driven over stdio by pytest-lsp."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

SERVER = ClientServerConfig(server_command=[sys.executable, "-m", "lsp_server", "serve"])
SOURCE = "import os\n\n\ndef list_files(root):\n    \n"
URI = "file:///workspace/example.py"


async def _start(client: LanguageClient, options: dict) -> None:
    capabilities = client_capabilities("visual-studio-code")
    capabilities.text_document.inline_completion = types.InlineCompletionClientCapabilities()
    @client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def register(params: types.RegistrationParams) -> None:
        client.registrations = [r.method for r in params.registrations]

    client.initialize_result = await client.initialize_session(
        types.InitializeParams(capabilities=capabilities, initialization_options=options,
                               root_uri="file:///workspace")
    )


async def status(client: LanguageClient) -> dict:
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="swiftguard.status", arguments=[])
    )


async def wait_for_state(client: LanguageClient, *states: str, timeout: float = 120) -> dict:
    async def poll() -> dict:
        while (current := await status(client))["engine"]["state"] not in states:
            await asyncio.sleep(0.1)
        return current

    return await asyncio.wait_for(poll(), timeout)


def open_document(client: LanguageClient, text: str = SOURCE, uri: str = URI, language_id: str = "python") -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=1, text=text)
        )
    )


def inline_params(line: int, character: int, uri: str = URI) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )


def insert_text(client: LanguageClient, line: int, character: int, text: str, version: int = 2) -> None:
    """An incremental didChange inserting ``text`` at a position, as typing does."""
    at = types.Position(line=line, character=character)
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=version),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at), text=text)],
        )
    )


def configure(client: LanguageClient, **settings) -> None:
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"swiftguard": settings}))


@pytest_lsp.fixture(config=SERVER)
async def client(lsp_client: LanguageClient, tiny_model_dir):
    await _start(lsp_client, {"model": str(tiny_model_dir), "dtype": "float32", "maxNewTokens": 8,
                              "generalCorpus": False})
    await wait_for_state(lsp_client, "ready")
    yield
    await lsp_client.shutdown_session()


@pytest_lsp.fixture(config=SERVER)
async def broken_client(lsp_client: LanguageClient, tmp_path):
    await _start(lsp_client, {"model": str(tmp_path / "no-such-model"), "maxNewTokens": 8})
    yield
    await lsp_client.shutdown_session()


async def test_capabilities_and_progress(client: LanguageClient):
    caps = client.initialize_result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert set(caps.execute_command_provider.commands) >= {"swiftguard.status", "swiftguard.restart"}

    async def ended() -> None:  # the state turns "ready" in the loading thread, just before the end is sent
        while not (loads := loading_progress(client)) or not isinstance(loads[0][-1], types.WorkDoneProgressEnd):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(ended(), 30)
    loading = loading_progress(client)
    assert len(loading) == 1 and loading[0][-1].message == "ready"


async def test_inline_completion_and_stats(client: LanguageClient):
    open_document(client)
    result = await client.text_document_inline_completion_async(inline_params(4, 4))
    assert len(result.items) == 1
    item = result.items[0]
    assert item.insert_text
    assert item.range.start == types.Position(line=4, character=4)
    current = await status(client)
    assert current["engine"]["model"] and current["engine"]["device"] == "cpu"
    assert "no draft head for" in current["engine"]["draft_head"]  # the tiny test model has none: status says so
    assert current["engine"]["self_draft"] is True  # an fp32 model drafts with its float16 copy
    assert current["last_completion"]["new_tokens"] > 0
    assert current["requests"]["completed"] >= 1


async def test_completion_fallback_item_starts_at_the_word(client: LanguageClient):
    open_document(client, "def list_files(root):\n    ret")
    result = await client.text_document_completion_async(
        types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line=1, character=7))
    )
    assert len(result.items) == 1
    edit = result.items[0].text_edit
    assert edit.range.start == types.Position(line=1, character=4)
    assert edit.new_text.startswith("ret") and len(edit.new_text) > 3


async def test_incremental_change_is_seen(client: LanguageClient):
    open_document(client, "x = 1\n")
    assert not (await client.text_document_inline_completion_async(inline_params(3, 0))).items
    insert_text(client, 1, 0, "y = 2\nz = 3\ndef f():\n")
    result = await client.text_document_inline_completion_async(inline_params(3, 0))
    assert len(result.items) == 1


async def test_typed_ahead_request_skips_the_model(client: LanguageClient):
    open_document(client)
    first = (await client.text_document_inline_completion_async(inline_params(4, 4))).items[0].insert_text
    typed = first[:2]
    insert_text(client, 4, 4, typed)
    second = await client.text_document_inline_completion_async(inline_params(4, 4 + len(typed)))
    assert second.items[0].insert_text == first[len(typed):]
    assert (await status(client))["last_completion"]["source"] == "typeahead"


@pytest.mark.parametrize(
    ("uri", "text", "line"),
    [("file:///never-opened.py", None, 0), (URI, SOURCE, 99), (URI, "bin\x00ary\n", 0)],
    ids=["unknown-uri", "past-end", "binary"],
)
async def test_bad_requests_get_empty_results(client: LanguageClient, uri, text, line):
    if text is not None:
        open_document(client, text)
    result = await client.text_document_inline_completion_async(inline_params(line, 0, uri))
    assert not result.items
    assert (await status(client))["engine"]["state"] == "ready"


async def test_invalid_settings_are_reported_and_previous_value_kept(client: LanguageClient):
    configure(client, maxNewTokens=-3, bogus=1)
    await asyncio.sleep(0.3)
    messages = [m.message for m in client.messages]
    assert any("maxNewTokens" in m and "keeping 8" in m for m in messages)
    assert any("unknown setting swiftguard.bogus" in m for m in messages)
    assert (await status(client))["settings"]["maxNewTokens"] == 8


async def test_cancel_request_stops_generation(client: LanguageClient):
    configure(client, maxNewTokens=4096)
    open_document(client)
    await asyncio.sleep(0.2)
    msg_id = f"cancel-{uuid.uuid4().hex}"
    pending = asyncio.ensure_future(
        client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(4, 4), msg_id=msg_id)
    )
    await asyncio.sleep(0.3)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
    with pytest.raises(JsonRpcException):
        await asyncio.wait_for(pending, 30)
    counts = (await status(client))["requests"]
    assert counts["cancelled"] == 1
    configure(client, maxNewTokens=8)
    await asyncio.sleep(0.2)
    assert (await client.text_document_inline_completion_async(inline_params(4, 4))).items


async def test_newer_request_supersedes_older_without_cancel(client: LanguageClient):
    configure(client, maxNewTokens=4096)
    open_document(client)
    await asyncio.sleep(0.2)
    older = asyncio.ensure_future(client.text_document_inline_completion_async(inline_params(4, 4)))
    await asyncio.sleep(0.3)
    configure(client, maxNewTokens=8)
    await asyncio.sleep(0.2)
    newer = await client.text_document_inline_completion_async(inline_params(4, 2))
    assert not (await asyncio.wait_for(older, 30)).items
    assert newer.items
    assert (await status(client))["requests"]["superseded"] >= 1


def loading_progress(client: LanguageClient) -> list[list]:
    """The ``$/progress`` sequences of model loads, in the order they began."""
    return [reports for reports in client.progress_reports.values()
            if reports and getattr(reports[0], "title", "") == "Swiftguard: loading model"]


async def test_restart_reloads(client: LanguageClient):
    assert len(loading_progress(client)) == 1
    await client.workspace_execute_command_async(types.ExecuteCommandParams(command="swiftguard.restart", arguments=[]))

    async def reloaded() -> None:  # the state alone was "ready" before the restart too
        while len(loads := loading_progress(client)) < 2 or not isinstance(loads[1][-1], types.WorkDoneProgressEnd):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(reloaded(), 60)
    assert loading_progress(client)[1][-1].message == "ready"
    assert (await status(client))["engine"]["state"] == "ready"
    open_document(client)
    assert (await client.text_document_inline_completion_async(inline_params(4, 4))).items


async def test_missing_model_is_shown_and_server_stays_up(broken_client: LanguageClient):
    current = await wait_for_state(broken_client, "error")
    assert "does not exist" in current["engine"]["error"]
    async def shown() -> None:
        while not any(m.type == types.MessageType.Error and "could not load" in m.message for m in broken_client.messages):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(shown(), 10)
    open_document(broken_client)
    assert not (await broken_client.text_document_inline_completion_async(inline_params(4, 4))).items


@pytest_lsp.fixture(config=SERVER)
async def workspace_client(lsp_client: LanguageClient, tiny_model_dir, tmp_path):
    (tmp_path / "lib.py").write_text("import zlib\n\n\ndef compute_checksum(payload):\n    return zlib.crc32(payload)\n")
    capabilities = client_capabilities("visual-studio-code")
    lsp_client.registrations = []

    @lsp_client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def register(params: types.RegistrationParams) -> None:
        lsp_client.registrations = [r.method for r in params.registrations]

    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=capabilities, root_uri=tmp_path.as_uri(),
        initialization_options={"model": str(tiny_model_dir), "dtype": "float32", "generalCorpus": False},
    ))
    lsp_client.root = tmp_path
    await wait_for_state(lsp_client, "ready")
    yield
    await lsp_client.shutdown_session()


async def retrieved(client: LanguageClient, uri: str, line: int, character: int, wanted: str) -> list[dict]:
    """Ask ``swiftguard.retrieve`` until a candidate contains ``wanted`` (indexing is asynchronous)."""
    async def poll() -> list[dict]:
        while True:
            result = await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="swiftguard.retrieve", arguments=[uri, line, character]))
            if any(wanted in c["text"] for c in result["candidates"]):
                return result["candidates"]
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(poll(), 30)


async def test_disk_files_and_unsaved_edits_feed_the_datastore(workspace_client: LanguageClient):
    client = workspace_client
    assert types.WORKSPACE_DID_CHANGE_WATCHED_FILES in client.registrations
    scratch = (client.root / "scratch.py").as_uri()
    open_document(client, "check = zlib.", scratch)  # the cursor at the end: no text after it to echo
    assert any(c["source"] == "repository" for c in await retrieved(client, scratch, 0, 13, "crc32"))

    unsaved = (client.root / "unsaved.py").as_uri()  # never written to disk
    open_document(client, "value = frobnicate_widget(alpha_one, beta_two)\n", unsaved)
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=(client.root / "probe.py").as_uri(), language_id="python", version=1, text="x = frobnicate_widget(")))
    probe = (client.root / "probe.py").as_uri()
    await retrieved(client, probe, 0, 22, "alpha_one")

    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=unsaved, version=2),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text="value = frobnicate_widget(gamma_three)\n")],
    ))
    candidates = await retrieved(client, probe, 0, 22, "gamma_three")
    assert not any("alpha_one" in c["text"] for c in candidates)

    # A file changed on disk, reported by the client's watcher, is re-read.
    (client.root / "lib.py").write_text("import zlib\n\n\ndef compute_checksum(payload):\n    return zlib.adler32(payload)\n")
    client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams(changes=[
        types.FileEvent(uri=(client.root / "lib.py").as_uri(), type=types.FileChangeType.Changed)]))
    await retrieved(client, scratch, 0, 13, "adler32")


GOROOT = Path(tempfile.mkdtemp(prefix="swiftguard-goroot-"))
"""A Go toolchain's sources for the server below: its general Go corpus comes from here."""


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER.server_command,
                                              server_env={**os.environ, "GOROOT": str(GOROOT)}))
async def go_client(lsp_client: LanguageClient, tiny_model_dir, tmp_path):
    (GOROOT / "src" / "strings").mkdir(parents=True, exist_ok=True)
    (GOROOT / "src" / "strings" / "quokka.go").write_text(
        "package strings\n\nfunc (b *Builder) WriteQuokka(s string) {\n\tb.buf = appendQuokka(b.buf, s)\n}\n")
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"), root_uri=tmp_path.as_uri(),
        initialization_options={"model": str(tiny_model_dir), "dtype": "float32", "generalCorpus": False},
    ))
    lsp_client.root = tmp_path
    await wait_for_state(lsp_client, "ready")
    yield
    await lsp_client.shutdown_session()


async def test_a_documents_language_brings_its_general_corpus(go_client: LanguageClient):
    """With ``generalCorpus`` on, an open Go file gets the Go toolchain's code indexed in the
    background; a plain-text document with the same text gets no drafts from it."""
    client = go_client
    text = "func (b *Builder) WriteQuokka(s string) {\n\tb.buf ="
    go_file = (client.root / "main.go").as_uri()
    open_document(client, text, go_file, "go")
    await asyncio.sleep(1.0)  # a one-file corpus builds in milliseconds when it is asked for
    assert (await status(client))["datastore"]["general_corpora"] == {}  # the setting is off
    configure(client, generalCorpus=True)
    candidates = await retrieved(client, go_file, 1, 8, "appendQuokka")
    assert any(c["source"] == "general" and "appendQuokka" in c["text"] for c in candidates)
    assert list((await status(client))["datastore"]["general_corpora"]) == ["go"]
    notes = (client.root / "notes.txt").as_uri()
    open_document(client, text, notes, "plaintext")
    result = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="swiftguard.retrieve", arguments=[notes, 1, 8]))
    assert not any(c["source"] == "general" for c in result["candidates"])


_EXIT_DURING_BACKGROUND_JOB = """
import asyncio, sys, time
from lsp_server.server import in_background

async def main():
    assert await in_background(pow, 2, 10) == 1024
    try:
        await in_background(int, "not a number")
    except ValueError:
        pass
    else:
        sys.exit(3)
    in_background(time.sleep, 300)  # an index build still running when the client says exit
    await asyncio.sleep(0.1)
    sys.exit(0)

asyncio.run(main())
"""


def test_exit_does_not_wait_for_background_jobs():
    # With the loop's default executor, interpreter exit joined the sleeping thread.
    done = subprocess.run([sys.executable, "-c", _EXIT_DURING_BACKGROUND_JOB], timeout=60, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
