"""The token index against a brute-force reference, and incremental updates against rebuilds."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsp_server.datastore.chunking import split_chunks
from lsp_server.datastore.index import MAX_K, MIN_K, TokenIndex, Unit, as_tokens
from lsp_server.datastore.repository import FileContent, RepositoryIndex

_VOCAB: dict[str, int] = {}


def word_encode(text: str) -> list[int]:
    return [_VOCAB.setdefault(w, len(_VOCAB)) for w in re.findall(r"\w+|[^\w\s]|\s", text)]


def reference(sequences: list[list[int]], context: list[int], span: int) -> tuple[int, Counter] | None:
    """Longest suffix k (16..2) of ``context`` occurring in ``sequences``, continuations counted."""
    for k in range(min(MAX_K, len(context)), MIN_K - 1, -1):
        query, found = context[-k:], Counter()
        for seq in sequences:
            for i in range(k, len(seq)):
                if seq[i - k : i] == query:
                    found[tuple(seq[i : i + span])] += 1
        if found:
            return k, found
    return None


def answer(index: TokenIndex, context: list[int], span: int) -> tuple[int, dict] | None:
    match = index.lookup(context, span, max_hits=10**9)
    return None if match is None else (match.length, dict(zip(match.continuations, match.counts)))


def unit(key: int, tokens: list[int]) -> Unit:
    return Unit(key, as_tokens([]), as_tokens(tokens), as_tokens([]))


sequences = st.lists(st.integers(0, 4), max_size=40)
contexts = st.lists(st.integers(0, 5), max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    seqs=st.lists(sequences, min_size=1, max_size=8),
    batch=st.integers(1, 3),
    removed=st.sets(st.integers(0, 7)),
    queries=st.lists(st.tuples(contexts, st.integers(1, 16)), min_size=1, max_size=12),
)
def test_lookup_matches_brute_force_after_adds_removes_and_merges(seqs, batch, removed, queries):
    index = TokenIndex()
    for first in range(0, len(seqs), batch):
        index.update(add=[unit(k, seqs[k]) for k in range(first, min(first + batch, len(seqs)))])
    index.update(remove=removed)
    while index.compact():
        pass
    live = [seq for k, seq in enumerate(seqs) if k not in removed]
    for context, span in queries:
        expected = reference(live, context, span)
        got = answer(index, context, span)
        if expected is None:
            assert got is None
        else:
            assert got == (expected[0], dict(expected[1]))


def test_leads_and_tails_extend_contexts_and_continuations_but_are_not_indexed():
    index = TokenIndex()
    index.update(add=[Unit(0, as_tokens([1, 2, 3]), as_tokens([4, 5]), as_tokens([6, 7]))])
    assert answer(index, [1, 2], 16) is None  # positions inside the lead are not indexed
    assert answer(index, [9, 1, 2, 3], 3) == (3, {(4, 5, 6): 1})
    assert answer(index, [3, 4], 16) == (2, {(5, 6, 7): 1})
    assert answer(index, [5, 6], 16) is None  # nor those inside the tail


def test_large_vocabularies_and_foreign_tokens():
    big = [70_000, 150_000, 151_000, 70_000, 150_000, 9]
    index = TokenIndex()
    index.update(add=[unit(0, big)])
    assert answer(index, [70_000, 150_000], 4) == (2, {(151_000, 70_000, 150_000, 9): 1, (9,): 1})
    assert answer(index, [1 << 40, 70_000, 150_000], 1) == (2, {(151_000,): 1, (9,): 1})
    assert answer(index, [70_000, -1], 1) is None


def test_sampled_counts_are_scaled_to_the_number_of_hits():
    index = TokenIndex()
    index.update(add=[unit(0, [1, 2, 3] * 500 + [1, 2, 4] * 500)])
    match = index.lookup([7, 1, 2], 1, max_hits=50)
    assert match.length == 2 and match.hits == 1000
    assert sum(match.counts) == pytest.approx(1000)
    assert dict(zip(match.continuations, match.counts))[(3,)] == pytest.approx(500, rel=0.1)


def test_removed_units_leave_no_trace_and_merges_reclaim_them():
    index = TokenIndex()
    index.update(add=[unit(0, list(range(5000))), unit(1, [1, 2, 3])])
    index.update(remove=[0])
    assert answer(index, [1, 2], 1) == (2, {(3,): 1})
    assert answer(index, [100, 101], 1) is None
    assert index.compact() and not index.compact()
    assert index.tokens == 3 and index.segments[0].total_tokens == 3


# -- files: chunked, incremental ------------------------------------------------------

lines = st.lists(
    st.one_of(st.just(""), st.tuples(st.sampled_from(["", "", "    ", "  "]), st.text("ab(): =x", max_size=8))),
    max_size=25,
).map(lambda rows: "\n".join(row if isinstance(row, str) else row[0] + row[1] for row in rows))
edits = st.tuples(st.integers(0, 3), st.floats(0, 1), st.integers(0, 12),
                  st.sampled_from(["", "\n", "\n\n", "x", "  b(", "def f():\n    ", None]))


def _edit(text: str, where: float, width: int, insert: str) -> str:
    start = int(where * len(text))
    return text[:start] + insert + text[start + width :]


@settings(max_examples=80, deadline=None)
@given(initial=st.lists(lines, min_size=1, max_size=4), steps=st.lists(edits, max_size=15),
       queries=st.lists(st.tuples(st.integers(0, 3), st.floats(0, 1), st.integers(0, 20)), max_size=30))
def test_incremental_file_index_answers_like_a_rebuild_and_like_whole_files(initial, steps, queries):
    files = {f"f{i}.py": text for i, text in enumerate(initial)}
    incremental = RepositoryIndex(word_encode)
    incremental.apply({path: FileContent(text, None) for path, text in files.items()})
    for file_no, where, width, insert in steps:
        path = f"f{file_no}.py"
        if insert is None:
            files.pop(path, None)
            incremental.apply({path: None})
        else:
            files[path] = _edit(files.get(path, ""), where, width, insert)
            incremental.apply({path: FileContent(files[path], None)})
        if file_no == 0:
            while incremental.index.compact():
                pass
    rebuilt = RepositoryIndex(word_encode)
    rebuilt.apply({path: FileContent(text, None) for path, text in files.items()})
    tokens = {path: [t for chunk in split_chunks(text) for t in word_encode(chunk)] for path, text in files.items()}
    whole = TokenIndex()
    whole.update(add=[unit(i, seq) for i, seq in enumerate(tokens.values())])
    assert {p: e.tokens.tolist() for p, e in incremental.files.items()} == tokens
    assert incremental.tokens == sum(map(len, tokens.values()))
    for file_no, where, length in queries:
        seq = tokens.get(f"f{file_no}.py", [])
        end = int(where * len(seq))
        context = seq[max(0, end - length) : end]
        for span in (1, 4, 16):
            expected = answer(whole, context, span)
            assert answer(incremental.index, context, span) == expected
            assert answer(rebuilt.index, context, span) == expected


def test_an_edit_refreshes_the_tails_and_leads_of_neighbouring_chunks():
    text = "a\n\nb\n\nc\n\nd\n\ne\n"  # chunks shorter than 16 tokens: two away still see the edit
    index = RepositoryIndex(word_encode)
    index.apply({"m.py": FileContent(text, None)})
    assert len(index.files["m.py"].units) == 5
    index.apply({"m.py": FileContent(text.replace("c", "x y"), None)})
    before_change = index.index.lookup(word_encode("a\n"), 16)
    assert before_change.continuations == [tuple(word_encode("\nb\n\nx y\n\nd\n\ne\n"))]
    after_change = index.index.lookup(word_encode("b\n\nx y\n\nd\n\n"), 16)
    assert after_change.length == len(word_encode("b\n\nx y\n\nd\n\n"))
    assert after_change.continuations == [tuple(word_encode("e\n"))]


def test_an_edit_reindexes_only_nearby_chunks():
    body = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(200))
    index = RepositoryIndex(word_encode)
    index.apply({"a.py": FileContent(body, None)})
    before = list(index.files["a.py"].units)
    edited = body.replace("return x + 100\n", "return x - 100\n")
    index.apply({"a.py": FileContent(edited, None)})
    after = index.files["a.py"].units
    assert len(after) == len(before) == 200
    assert 1 <= sum(a != b for a, b in zip(before, after)) <= 3
    match = index.index.lookup(word_encode("def f100(x):\n    return x"), 6)
    assert match.continuations == [tuple(word_encode(" - 100\n\n"))]
    assert index.index.lookup(word_encode("return x + 100"), 1).length == 2  # only " 100" is left


@given(st.lists(st.sampled_from(["", "x = 1", "    y", "def f():", "  \t", "class A:", "\r"]), max_size=60))
def test_chunks_join_back_and_earlier_boundaries_do_not_move(rows):
    text = "\n".join(rows)
    chunks = split_chunks(text)
    assert "".join(chunks) == text
    appended = split_chunks(text + "\n\nz = 2\n")
    assert appended[: max(0, len(chunks) - 1)] == chunks[: max(0, len(chunks) - 1)]
