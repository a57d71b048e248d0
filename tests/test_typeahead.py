from lsp_server.engine.typeahead import TypeaheadCache


def test_typing_through_a_suggestion_returns_the_rest():
    cache = TypeaheadCache()
    cache.remember("a", "def f(x):\n    ", "\n", "return x + 1")
    assert cache.lookup("a", "def f(x):\n    ret", "\n") == "urn x + 1"
    assert cache.lookup("a", "def f(x):\n    ", "\n") == "return x + 1"


def test_diverging_text_other_suffix_or_document_misses():
    cache = TypeaheadCache()
    cache.remember("a", "p", "s", "abc")
    assert cache.lookup("a", "pax", "s") is None
    assert cache.lookup("a", "pa", "t") is None
    assert cache.lookup("b", "pa", "s") is None
    assert cache.lookup("a", "", "s") is None


def test_fully_typed_suggestion_misses():
    cache = TypeaheadCache()
    cache.remember("a", "p", "s", "abc")
    assert cache.lookup("a", "pabc", "s") is None


def test_bounded_documents():
    cache = TypeaheadCache(max_documents=2)
    for key in "abc":
        cache.remember(key, "p", "s", "x")
    assert cache.lookup("a", "p", "s") is None
    assert cache.lookup("c", "p", "s") == "x"
