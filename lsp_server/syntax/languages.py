"""Which tree-sitter grammar a document uses, and cached parsers for it.

The grammars come from the ``tree_sitter_<lang>`` wheels installed with the package, so
nothing is downloaded at run time.  A language is named by the LSP ``languageId`` when the
editor sends one, else guessed from the file extension.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePath

from tree_sitter import Language, Parser


@dataclass(frozen=True)
class LanguageSpec:
    name: str
    module: str
    """The grammar wheel's module."""
    entry: str
    """The function in ``module`` that returns the grammar."""
    extensions: tuple[str, ...]
    language_ids: tuple[str, ...]
    braces: bool
    """Blocks are closed by ``}`` (else: by indentation, Python)."""
    function_types: frozenset[str]
    """Node types of function-like definitions whose body is a block."""
    comment_types: frozenset[str] = frozenset({"comment"})


_C_FUNCS = frozenset({"function_definition"})
_JS_FUNCS = frozenset({
    "function_declaration", "function_expression", "function", "generator_function_declaration",
    "generator_function", "arrow_function", "method_definition",
})

LANGUAGES: dict[str, LanguageSpec] = {
    spec.name: spec
    for spec in (
        LanguageSpec("python", "tree_sitter_python", "language", (".py", ".pyi", ".pyw"), ("python",), False,
                     frozenset({"function_definition"})),
        LanguageSpec("javascript", "tree_sitter_javascript", "language", (".js", ".mjs", ".cjs", ".jsx"),
                     ("javascript", "javascriptreact"), True, _JS_FUNCS),
        LanguageSpec("typescript", "tree_sitter_typescript", "language_typescript", (".ts", ".mts", ".cts"),
                     ("typescript",), True, _JS_FUNCS),
        LanguageSpec("tsx", "tree_sitter_typescript", "language_tsx", (".tsx",), ("typescriptreact",), True,
                     _JS_FUNCS),
        LanguageSpec("go", "tree_sitter_go", "language", (".go",), ("go",), True,
                     frozenset({"function_declaration", "method_declaration", "func_literal"})),
        LanguageSpec("java", "tree_sitter_java", "language", (".java",), ("java",), True,
                     frozenset({"method_declaration", "constructor_declaration", "lambda_expression"}),
                     frozenset({"line_comment", "block_comment"})),
        LanguageSpec("c", "tree_sitter_c", "language", (".c",), ("c",), True, _C_FUNCS),
        LanguageSpec("cpp", "tree_sitter_cpp", "language",
                     (".cc", ".cpp", ".cxx", ".c++", ".hpp", ".hh", ".hxx", ".h", ".inl", ".ipp"),
                     ("cpp", "cuda-cpp"), True, frozenset({"function_definition", "lambda_expression"})),
        LanguageSpec("rust", "tree_sitter_rust", "language", (".rs",), ("rust",), True,
                     frozenset({"function_item", "closure_expression"}),
                     frozenset({"line_comment", "block_comment"})),
    )
}


def detect_language(path: str | None = None, language_id: str | None = None) -> str | None:
    """The grammar name for a document, from its LSP languageId first, else the extension
    of ``path`` (a file path or a document URI).

    ``.h`` maps to C++: a C++ grammar parses C headers well, the reverse is not true.
    """
    if language_id:
        key = language_id.lower()
        for spec in LANGUAGES.values():
            if key == spec.name or key in spec.language_ids:
                return spec.name
    if path:
        suffix = PurePath(path).suffix.lower()
        for spec in LANGUAGES.values():
            if suffix in spec.extensions:
                return spec.name
    return None


@lru_cache(maxsize=None)
def grammar(name: str) -> Language:
    spec = LANGUAGES[name]
    return Language(getattr(importlib.import_module(spec.module), spec.entry)())


def parser(name: str) -> Parser:
    """A new parser (parsers keep state, so each user gets its own; grammars are shared)."""
    return Parser(grammar(name))
