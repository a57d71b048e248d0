"""The datastore service on real folders: watchdog events, editor buffers, persistence, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import time
from pathlib import Path

import pytest

from lsp_server.datastore import general
from lsp_server.datastore.cli import add_index_parser, run_index
from lsp_server.datastore.service import DatastoreService

_VOCAB: dict[str, int] = {}


def word_encode(text: str) -> list[int]:
    return [_VOCAB.setdefault(w, len(_VOCAB)) for w in re.findall(r"\w+|[^\w\s]|\s", text)]


def until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def knows(service: DatastoreService, before: str, after: str) -> bool:
    """Whether the repository source continues ``before`` with ``after``."""
    want = tuple(word_encode(after))
    found = service.datastore.retrieve(word_encode(before), span=len(want))
    return any(c.tokens == want and c.source == "repository" for c in found)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SWIFTGUARD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def make_service(cache):
    services = []

    def make(root: Path, **options) -> DatastoreService:
        service = DatastoreService(root, word_encode, "words", save_interval=3600, **options)
        services.append(service)
        return service

    yield make
    for service in services:
        service.stop()


def test_watchdog_sees_create_modify_delete_rename_and_ignores(tmp_path, make_service):
    root = tmp_path / "ws"
    root.mkdir()
    (root / ".gitignore").write_text("ignored/\n")
    (root / "a.py").write_text("def alpha():\n    return 1\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    service = make_service(root)
    service.start()
    service.start_watching()
    assert service.wait_idle(10)
    assert knows(service, "def alpha():\n    return", " 1")

    (root / "b.py").write_text("def beta():\n    return 2\n")
    assert until(lambda: knows(service, "def beta():\n    return", " 2"))
    (root / "a.py").write_text("def alpha():\n    return 11\n")
    assert until(lambda: knows(service, "def alpha():\n    return", " 11"))
    (root / "b.py").rename(root / "c.py")
    assert until(lambda: set(service.repository.files) == {"a.py", "c.py"})
    (root / "a.py").unlink()
    assert until(lambda: not knows(service, "def alpha():\n    return", " 11"))
    (root / "ignored").mkdir()
    (root / "ignored" / "x.py").write_text("def gamma():\n    return 3\n")
    (outside / "o.py").write_text("def delta():\n    return 4\n")
    (root / "link").symlink_to(outside)
    (root / "sub").mkdir()
    (root / "sub" / "d.py").write_text("def eps():\n    return 5\n")
    assert until(lambda: "sub/d.py" in service.repository.files)
    assert service.wait_idle(5)
    assert set(service.repository.files) == {"c.py", "sub/d.py"}
    assert not knows(service, "def delta():\n    return", " 4")


def test_editor_text_wins_until_close_and_client_events_are_deduplicated(tmp_path, make_service, monkeypatch):
    root = tmp_path / "ws"
    root.mkdir()
    path = root / "m.py"
    path.write_text("value = 1\n")
    service = make_service(root, use_client_watcher=True)
    service.start()
    service.start_watching()  # no-op: the client reports file changes
    assert service._observer is None and service.wait_idle(5)
    service.open_document(path, "value = 2\n")
    assert service.wait_idle(5) and knows(service, "value =", " 2")
    path.write_text("value = 3\n")
    service.files_changed([path])
    assert service.wait_idle(5) and knows(service, "value =", " 2")
    service.change_document(path, "value = 4\n")
    assert service.wait_idle(5) and knows(service, "value =", " 4") and not knows(service, "value =", " 2")
    service.close_document(path)
    assert service.wait_idle(5) and knows(service, "value =", " 3")

    reads = []
    original = service.workspace.read
    monkeypatch.setattr(service.workspace, "read", lambda rel: reads.append(rel) or original(rel))
    service.files_changed([path, str(path), tmp_path / "elsewhere.py", "/etc/passwd"])
    service.files_changed([path])
    assert service.wait_idle(5) and reads == []  # same (mtime, size): nothing re-read
    path.write_text("value = 55\n")
    service.files_changed([path])
    service.files_changed([path])
    assert service.wait_idle(5) and reads == ["m.py"] and knows(service, "value =", " 55")


def test_a_burst_of_events_stays_consistent_and_callers_never_wait(tmp_path, make_service):
    root = tmp_path / "ws"
    root.mkdir()
    service = make_service(root, use_client_watcher=True)
    service.start()
    assert service.wait_idle(5)
    paths = []
    for i in range(2000):
        paths.append(root / f"f{i}.py")
        paths[-1].write_text(f"def f{i}():\n    return {i}\n")
    started = time.perf_counter()
    for _ in range(5):  # every file reported five times, one event per call
        for path in paths:
            service.files_changed([path])
    assert time.perf_counter() - started < 2.0
    for path in paths[:1000]:
        path.unlink()
    service.files_changed(paths[:1000])
    assert service.wait_idle(20)
    assert sorted(service.repository.files) == sorted(p.name for p in paths[1000:])
    assert knows(service, "def f1500():\n    return", " 1500") and not knows(service, "def f5():\n    return", " 5")
    assert service.repository.tokens == sum(len(word_encode(p.read_text())) for p in paths[1000:])


def test_saved_index_is_reloaded_and_stale_files_are_refreshed(tmp_path, cache, monkeypatch):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "keep.py").write_text("def keep():\n    return 1\n")
    (root / "edit.py").write_text("def edit():\n    return 1\n")
    (root / "gone.py").write_text("def gone():\n    return 1\n")
    (root / "touch.py").write_text("def touch():\n    return 1\n")
    first = DatastoreService(root, word_encode, "words")
    first.start()
    assert first.wait_idle(10)
    first.stop()
    saved = list((cache / "datastore" / "repository").glob("*.npz"))
    assert len(saved) == 1

    (root / "edit.py").write_text("def edit():\n    return 22\n")
    (root / "gone.py").unlink()
    (root / "new.py").write_text("def new():\n    return 3\n")
    stat = (root / "touch.py").stat()
    os.utime(root / "touch.py", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    encoded = []
    second = DatastoreService(root, lambda text: encoded.append(text) or word_encode(text), "words")
    second.start()
    assert second.wait_idle(10)
    second.stop()
    assert "".join(encoded) in {"def edit():\n    return 22\ndef new():\n    return 3\n",
                                "def new():\n    return 3\ndef edit():\n    return 22\n"}
    assert set(second.repository.files) == {"keep.py", "edit.py", "new.py", "touch.py"}
    assert knows(second, "def keep():\n    return", " 1") and knows(second, "def edit():\n    return", " 22")
    assert second.repository.files["touch.py"].stamp.mtime_ns == stat.st_mtime_ns + 10**9

    for key, corrupt in (("other", False), ("words", True)):  # another tokenizer's index; a corrupt file
        if corrupt:
            saved[0].write_bytes(b"not a zip file")
        encoded.clear()
        fresh = DatastoreService(root, lambda text: encoded.append(text) or word_encode(text), key, persist=False)
        fresh.start()
        assert fresh.wait_idle(10)
        fresh.stop()
        assert len(fresh.repository.files) == 4 and len(encoded) == 4


def test_general_corpus_builds_saves_and_loads(tmp_path, cache, monkeypatch):
    stdlib = tmp_path / "stdlib"
    for rel in ["json/encoder.py", "os_helpers.py", "test/test_x.py", "site-packages/pkg/mod.py", "notes.txt"]:
        (stdlib / rel).parent.mkdir(parents=True, exist_ok=True)
        (stdlib / rel).write_text(f"# {rel}\ndef helper_{len(rel)}(items):\n    return sorted(items)\n")
    monkeypatch.setattr(general, "stdlib_root", lambda: stdlib)
    assert [p.relative_to(stdlib).as_posix() for p in sorted(general.corpus_files(stdlib))] == [
        "json/encoder.py", "os_helpers.py"]
    progress = []
    service = DatastoreService(None, word_encode, "words", general_budget=10_000)
    assert not service.load_general("python")
    assert service.build_general(lambda done, total: progress.append((done, total)), "python")
    tokens = sum(len(word_encode((stdlib / r).read_text())) for r in ["json/encoder.py", "os_helpers.py"])
    assert progress[-1] == (tokens, 10_000) and service.general_sources["python"].index.tokens == tokens
    found = service.datastore.for_language("python").retrieve(word_encode("(items):\n    return"), span=3)
    assert found and found[0].tokens == tuple(word_encode(" sorted(")) and found[0].source == "general"
    assert found[0].count == pytest.approx(2 * 0.25)
    assert not service.datastore.for_language("go").retrieve(word_encode("(items):\n    return"), span=3)
    reloaded = DatastoreService(None, word_encode, "words", general_budget=10_000)
    assert reloaded.load_general("python") and reloaded.general_sources["python"].index.tokens == tokens
    small = DatastoreService(None, word_encode, "words", general_budget=5)
    assert small.build_general(name="python") and small.general_sources["python"].index.tokens == 5


def test_each_language_drafts_from_its_own_toolchain_corpus(tmp_path, cache, monkeypatch):
    node = tmp_path / "node_modules"
    files = {
        "npm/lib/fetch.js": "function fetchPackage(spec) {\n  return registry.get(spec)\n}\n",
        "npm/lib/fetch.min.js": "function a(b){return c.get(b)}",
        "npm/lib/types.d.ts": "declare function fetchPackage(spec: string): Promise<unknown>;\n",
        "npm/test/fetch.js": "function fetchPackage(spec) {\n  return mock.get(spec)\n}\n",
        "npm/lib/bundle.js": "x" * 5000 + "\n",  # one huge line: generated, not code to learn from
        "npm/lib/readme.md": "function fetchPackage(spec) {\n  return docs.get(spec)\n}\n",
    }
    for rel, text in files.items():
        (node / rel).parent.mkdir(parents=True, exist_ok=True)
        (node / rel).write_text(text)
    corpus = dataclasses.replace(general.CORPORA["javascript"], find_roots=lambda: [node])
    monkeypatch.setitem(general.CORPORA, "javascript", corpus)
    assert sorted(p.relative_to(node).as_posix() for p in general.corpus_files(node, corpus)) == [
        "npm/lib/bundle.js", "npm/lib/fetch.js"]  # bundle.js is read, then dropped as generated
    service = DatastoreService(None, word_encode, "words", general_budget=10_000)
    assert service.want_general("typescript") == "javascript"
    assert service.want_general("javascript") is None  # asked for once, by whichever language came first
    assert service.want_general("markdown") is None
    assert service.build_general(name="javascript")
    assert service.general_sources["javascript"].index.tokens == len(word_encode(files["npm/lib/fetch.js"]))
    context = word_encode("function fetchPackage(spec) {\n  return")
    for language in ("javascript", "typescript", "tsx"):
        found = service.datastore.for_language(language).retrieve(context, span=2)
        assert found and found[0].tokens == tuple(word_encode(" registry.get(")[:2]), language
    for language in ("python", "go", None):
        assert not service.datastore.for_language(language).retrieve(context, span=2)
    assert not DatastoreService(None, word_encode, "words").build_general(name="javascript", exclude=node / "npm")


def test_go_corpus_leaves_tests_out_and_follows_goroot(tmp_path, monkeypatch):
    src = tmp_path / "goroot" / "src"
    for rel in ["strings/builder.go", "strings/builder_test.go", "strings/testdata/x.go", "cmd/go/main.go"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("package x\n")
    monkeypatch.setenv("GOROOT", str(tmp_path / "goroot"))
    corpus = general.CORPORA["go"]
    assert corpus.roots() == [src]
    assert sorted(p.relative_to(src).as_posix() for p in general.corpus_files(src, corpus)) == [
        "cmd/go/main.go", "strings/builder.go"]
    assert general.corpus_for("cpp") is general.CORPORA["c"] and general.corpus_for("java") is None


def test_index_command_reports_files_tokens_and_memory(tmp_path, cache, tiny_model_dir, capsys):
    root = tmp_path / "ws"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("def double(x):\n    return 2 * x\n" * 20)
    (root / "data.bin").write_bytes(b"\0\1")
    parser = argparse.ArgumentParser()
    add_index_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["index", "--workspace", str(root), "--tokenizer", str(tiny_model_dir), "--json"])
    assert run_index(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == 1 and report["tokens"] > 100
    assert report["index_bytes"] > 0 and report["rss_bytes"] > report["index_bytes"]
    assert list((cache / "datastore" / "repository").glob("*.npz"))
    missing = parser.parse_args(["index", "--workspace", str(tmp_path / "nope"), "--tokenizer", str(tiny_model_dir)])
    assert run_index(missing) == 2


def test_index_general_command_builds_the_corpus_with_progress(tmp_path, cache, tiny_model_dir, capsys, monkeypatch):
    stdlib = tmp_path / "stdlib"
    stdlib.mkdir()
    (stdlib / "empty.py").write_text("")
    (stdlib / "shapes.py").write_text("def area(width, height):\n    return width * height\n" * 50)
    monkeypatch.setattr(general, "stdlib_root", lambda: stdlib)
    parser = argparse.ArgumentParser()
    add_index_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["index", "--general", "--tokenizer", str(tiny_model_dir), "--json"])
    assert run_index(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["tokens"] > 500 and "general python corpus" in captured.err
    assert len(list((cache / "datastore" / "general").glob("*.npz"))) == 1


def test_a_service_that_does_not_persist_goes_idle_after_the_save_interval(tmp_path):
    """Regression: with persist=False the worker once spun forever on a save it never did."""
    (tmp_path / "a.py").write_text("alpha beta gamma\n")
    service = DatastoreService(tmp_path, word_encode, "words", persist=False, reuse_saved=False,
                               use_client_watcher=True, save_interval=0.05)
    service.start()
    try:
        assert service.wait_idle(5)
        service.open_document(tmp_path / "a.py", "alpha beta delta\n")
        assert service.wait_idle(5)
        cpu = time.process_time()
        time.sleep(0.5)  # many save intervals: an idle worker sleeps through them
        assert time.process_time() - cpu < 0.2
        assert service.wait_idle(1)
    finally:
        service.stop()


@pytest.mark.parametrize("layout", ["unix", "windows"])
def test_node_corpus_is_found_next_to_the_node_binary(tmp_path, monkeypatch, layout):
    if layout == "unix":
        binary, modules = tmp_path / "bin" / "node", tmp_path / "lib" / "node_modules"
    else:
        binary, modules = tmp_path / "nodejs" / "node.exe", tmp_path / "nodejs" / "node_modules"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    (modules / "npm").mkdir(parents=True)
    monkeypatch.setattr(general.shutil, "which", lambda name: str(binary) if name == "node" else None)
    assert general.CORPORA["javascript"].roots() == [modules]
    monkeypatch.setattr(general.shutil, "which", lambda name: None)
    assert general.CORPORA["javascript"].roots() == []
