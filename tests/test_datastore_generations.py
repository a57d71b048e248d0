"""The model's own generations (the draft head's build shards) as a draft source."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lsp_server.datastore import Candidate, Datastore, IndexSource
from lsp_server.datastore.generations import load_generations
from lsp_server.datastore.service import DatastoreService
from lsp_server.drafthead.provenance import other_repository
from lsp_server.genguard.data import Sample, ShardWriter, Span

from test_datastore_sources import index_of


def _sample(kind: str, language: str, repo: str, tokens: list[int]) -> Sample:
    return Sample(Span(language, repo, f"/code/{repo}/module.py", "function"), kind,
                  np.zeros((len(tokens), 4), dtype=np.float16), np.zeros(len(tokens), dtype=np.uint8),
                  np.array(tokens, dtype=np.int32))


def _shard(path: Path, *samples: Sample) -> Path:
    writer = ShardWriter()
    for sample in samples:
        writer.add(sample)
    writer.write(path)
    return path


def test_generated_bodies_are_indexed_by_language_and_named_repositories_left_out(tmp_path):
    _shard(tmp_path / "generated-1.npz",
           _sample("generated", "python", "tools", [5, 6, 7, 8]),
           _sample("generated", "python", "requests", [5, 6, 9, 9]),  # the benchmarked repository
           _sample("teacher", "python", "tools", [5, 6, 3, 3]),  # real code, not the model's
           _sample("generated", "go", "tools", [5, 6, 4]))
    _shard(tmp_path / "generated-2.npz", _sample("generated", "python", "numpy", [1, 5, 6, 7, 2]))
    _shard(tmp_path / "files.npz", _sample("file", "python", "tools", [5, 6, 1]))  # windows of files: not generated
    (tmp_path / "generated-3.npz").write_bytes(b"not a shard")  # logged and skipped
    indexes = load_generations(tmp_path, other_repository(tmp_path / "requests-2.32.3"))
    assert sorted(indexes) == ["go", "python"]
    found = indexes["python"].lookup([5, 6], span=2)
    assert found is not None and sorted(zip(found.continuations, found.counts)) == [((7, 2), 1.0), ((7, 8), 1.0)]
    assert indexes["go"].lookup([5, 6], span=2).continuations == [(4,)]
    assert load_generations(tmp_path / "missing", other_repository(None)) == {}


def test_the_service_drafts_from_generations_beside_general_code_and_a_drafter_can_leave_them_out(tmp_path):
    _shard(tmp_path / "generated-1.npz", _sample("generated", "python", "tools", [1, 2, 3, 4]))
    service = DatastoreService(None, lambda text: [], "words")
    assert service.load_generations(tmp_path, other_repository(None)) == 4
    service.datastore.add_for_language("python", IndexSource("general", index_of([1, 2, 3, 5]), 0.25))
    datastore: Datastore = service.datastore.for_language("python")
    assert sorted(datastore.retrieve([1, 2, 3], span=1), key=lambda c: c.source) == [
        Candidate((5,), 0.25, "general", 3), Candidate((4,), 0.25, "generations", 3)]
    assert [c.source for c in service.datastore.for_language("python", ("generations",)).retrieve([1, 2, 3])] == [
        "general"]
    assert service.datastore.for_language("go").retrieve([1, 2, 3]) == []
    assert service.stats()["generations_tokens"] == {"python": 4}


def test_the_server_drafts_from_the_engines_generations_but_not_the_workspaces_own(tmp_path, monkeypatch):
    from lsp_server import indexing

    monkeypatch.setattr(indexing, "cache_root", lambda: tmp_path / "cache")
    shards = _shard(tmp_path / "shards" / "generated-1.npz",
                    _sample("generated", "python", "tools", [1, 2, 3, 4]),
                    _sample("generated", "python", "mylib", [1, 2, 3, 5])).parent
    root = tmp_path / "mylib-1.0"
    (root / "src" / "mylib").mkdir(parents=True)
    (root / "src" / "mylib" / "__init__.py").write_text("")

    class Engine:
        attached = None

        def encoders(self):
            return (lambda text: [], lambda texts: [[] for _ in texts], "words")

        def generations_dir(self):
            return shards

        def attach_retrieval(self, datastore, preference_file=None):
            self.attached = datastore

    engine, indexer = Engine(), indexing.WorkspaceIndexer()
    indexer.attach(engine, root, lambda _service, _corpus: None)
    try:
        assert indexer.stats()["generations_tokens"] == {"python": 4}  # mylib's own body left out
        found = engine.attached.for_language("python").retrieve([1, 2, 3], span=1)
        assert [(c.tokens, c.source) for c in found] == [((4,), "generations")]
    finally:
        indexer.stop()
