"""The suggestion cache: typing along a shown suggestion is answered from it."""

from __future__ import annotations

from localspec.lsp.suggestions import SuggestionCache


def test_typing_along_a_suggestion_returns_its_rest() -> None:
    cache = SuggestionCache(size=8)
    cache.put("file:///a.py", "def add(a, b):\n    ", "\n", "return a + b")
    assert cache.get("file:///a.py", "def add(a, b):\n    ", "\n") == "return a + b"
    assert cache.get("file:///a.py", "def add(a, b):\n    ret", "\n") == "urn a + b"
    assert cache.get("file:///a.py", "def add(a, b):\n    return a + ", "\n") == "b"


def test_misses_when_the_typed_text_diverges_or_context_differs() -> None:
    cache = SuggestionCache(size=8)
    cache.put("file:///a.py", "x = ", "", "compute()")
    assert cache.get("file:///a.py", "x = compute()", "") is None  # fully typed: nothing left to suggest
    assert cache.get("file:///a.py", "x = cal", "") is None
    assert cache.get("file:///a.py", "y = ", "") is None
    assert cache.get("file:///a.py", "x = ", "\nmore") is None  # the code after the cursor changed
    assert cache.get("file:///b.py", "x = ", "") is None
    assert cache.get("file:///a.py", "x", "") is None


def test_least_recently_added_entries_are_evicted() -> None:
    cache = SuggestionCache(size=2)
    for i in range(3):
        cache.put("file:///a.py", f"p{i}", "", f"s{i}")
    assert len(cache) == 2
    assert cache.get("file:///a.py", "p0", "") is None
    assert cache.get("file:///a.py", "p2", "") == "s2"
    cache.forget_document("file:///a.py")
    assert len(cache) == 0 and cache.get("file:///a.py", "p2", "") is None
