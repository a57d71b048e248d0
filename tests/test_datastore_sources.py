"""ContextSource (prompt lookup), IndexSource over real code, and the Datastore's merging."""

from __future__ import annotations

import pytest

from lsp_server.datastore import Candidate, ContextSource, Datastore, IndexSource
from lsp_server.datastore.index import MAX_SPAN, TokenIndex, Unit, as_tokens
from lsp_server.datastore.sources import CONTEXT_SPAN
from lsp_server.datastore.repository import FileContent, RepositoryIndex


def index_of(*sequences: list[int]) -> TokenIndex:
    index = TokenIndex()
    index.update(add=[Unit(i, as_tokens([]), as_tokens(s), as_tokens([])) for i, s in enumerate(sequences)])
    return index


def test_context_source_finds_the_longest_earlier_occurrence_not_itself():
    context = [1, 2, 3, 4, 9, 9, 2, 3, 5, 7, 1, 2, 3]
    found = ContextSource().retrieve(context, span=3)
    assert found == [Candidate((4, 9, 9), 1.0, "document", 3)]
    assert ContextSource().retrieve([5, 6, 7, 8]) == []  # only the trivial self-match exists
    assert ContextSource().retrieve([4]) == []


def test_prompt_lookup_drafts_past_the_index_span_and_the_index_does_not():
    passage = list(range(100, 140))  # 40 tokens seen before, then their start again
    context = [*passage, 7, *passage[:3]]
    (found,) = ContextSource().retrieve(context, span=64)
    assert found.tokens == tuple(passage[3 : 3 + CONTEXT_SPAN]) and len(found.tokens) == CONTEXT_SPAN > MAX_SPAN
    (indexed,) = IndexSource("repository", index_of(passage)).retrieve(passage[:3], span=64)
    assert indexed.tokens == tuple(passage[3 : 3 + MAX_SPAN])


def test_context_source_counts_searches_extra_tokens_and_weighs():
    context = [1, 2, 7, 1, 2, 7, 1, 2, 8, 1, 2]
    found = ContextSource(weight=2.0).retrieve(context, span=1)
    assert found == [Candidate((7,), 4.0, "document", 2), Candidate((8,), 2.0, "document", 2)]
    source = ContextSource(tokens=[5, 1, 2, 3, 4], name="suffix")
    assert source.retrieve([0, 1, 2], span=16) == [Candidate((3, 4), 1.0, "suffix", 2)]
    assert source.retrieve([0, 1, 2], span=16, max_candidates=0) == []


def test_index_source_retrieves_from_real_code(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    repository = RepositoryIndex(encode)
    code = "def area(radius):\n    return math.pi * radius ** 2\n"
    repository.apply({"geo.py": FileContent(code, None)})
    source = IndexSource("repository", repository.index, weight=0.5)
    context = encode("import math\n\ndef area(radius):\n    return")
    (candidate,) = source.retrieve(context, span=16)
    assert tokenizer.decode(candidate.tokens) == " math.pi * radius ** 2\n"
    assert candidate.count == 0.5 and candidate.source == "repository"
    assert candidate.match_length == min(16, len(encode("def area(radius):\n    return")))


def test_datastore_merges_sources_with_weights_and_sorts_by_count():
    repository = IndexSource("repository", index_of([1, 2, 3, 4], [1, 2, 3, 5]), weight=1.0)
    general = IndexSource("general", index_of([9, 1, 2, 3, 4], [0, 2, 3, 6], [1, 2, 3, 4]), weight=0.25)
    document = ContextSource(weight=3.0)
    datastore = Datastore([repository, general, document])
    found = datastore.retrieve([8, 1, 2, 3, 7, 7, 1, 2, 3], span=1)
    assert found == [
        Candidate((7,), 3.0, "document", 3),
        Candidate((4,), 1.5, "repository", 3),
        Candidate((5,), 1.0, "repository", 3),
    ]
    assert [c.tokens for c in datastore.retrieve([8, 1, 2, 3, 7, 7, 1, 2, 3], span=1, max_candidates=2)] == [(7,), (4,)]


def test_a_failing_source_is_skipped():
    class Broken:
        name, weight = "broken", 1.0

        def retrieve(self, context, span=16, max_candidates=64):
            raise RuntimeError("boom")

    datastore = Datastore([Broken(), IndexSource("repository", index_of([1, 2, 3]))])
    assert datastore.retrieve([1, 2]) == [Candidate((3,), 1.0, "repository", 2)]


@pytest.mark.parametrize("context", [[], [1], [2**32 + 5, 2**33]])
def test_unusable_contexts_return_nothing(context):
    assert Datastore([IndexSource("r", index_of([1, 2, 3])), ContextSource()]).retrieve(context) == []
