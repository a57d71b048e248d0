"""General code corpora: code that ships with this machine's toolchains, one index per language family.

A draft source needs ordinary, well-written code in the document's language that is
always present and needs no download.  Each toolchain brings its own: Python's standard
library, the JavaScript of Node's global packages (npm itself), the C and C++ system
headers (libstdc++ implements its templates there), Go's standard library, Rust's
``rust-src`` component.  A corpus that is not installed here is simply absent.
Test suites, fixtures and minified or generated files are left out; the files are taken
in an order fixed by a hash of their path (a spread over the whole tree, not its first
letters) until a token budget is reached, which bounds both the build time and the
memory (~30 bytes per token).  Each built index is saved as one ``.npz`` per corpus,
tokenizer and budget, and built only when a document of its language shows up.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import sysconfig
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import datastore_dir, short_hash
from .index import Segment, TokenIndex, Unit, as_tokens
from .persist import write_npz
from .types import Encode, EncodeBatch

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 1_000_000
"""Tokens per corpus: about 30 MB of index, built in well under a minute on two cores."""
FORMAT = 2
_SKIPPED_DIRS = frozenset({
    "test", "tests", "testdata", "testing", "__tests__", "fixtures", "idle_test", "site-packages", "dist-packages",
    "__pycache__", "docs", "examples",
})
_BATCH_FILES = 64
_MAX_MEAN_LINE = 200
"""Characters: above this mean line length a file is minified or generated, not code to learn from."""

Progress = Callable[[int, int], None]
"""Called with (tokens indexed so far, token budget)."""


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _existing(paths: Iterable[Path]) -> list[Path]:
    return [path for path in paths if path.is_dir()]


def _python_roots() -> list[Path]:
    return _existing([stdlib_root()])


def _node_roots() -> list[Path]:
    """Node's global packages (npm, corepack), next to the ``node`` binary (``lib/node_modules``
    on Unix, ``node_modules`` beside ``node.exe`` on Windows)."""
    node = shutil.which("node")
    if not node:
        return []
    bin_dir = Path(node).resolve().parent
    return _existing([bin_dir.parent / "lib" / "node_modules", bin_dir / "node_modules"])[:1]


def _header_roots() -> list[Path]:
    """System headers; on macOS the Command Line Tools' SDK and libc++, and Homebrew's."""
    tools = Path("/Library/Developer/CommandLineTools")
    return _existing([Path("/usr/include"), Path("/usr/local/include"), tools / "SDKs/MacOSX.sdk/usr/include",
                      tools / "usr/include/c++/v1", Path("/opt/homebrew/include")])


def _go_roots() -> list[Path]:
    candidates = [Path(os.environ["GOROOT"]) / "src"] if os.environ.get("GOROOT") else []
    if go := shutil.which("go"):
        candidates.append(Path(go).resolve().parent.parent / "src")
    return _existing([*candidates, Path("/usr/local/go/src"), Path("/usr/lib/go/src")])[:1]


def _rust_roots() -> list[Path]:
    if os.environ.get("RUST_SRC_PATH"):
        return _existing([Path(os.environ["RUST_SRC_PATH"])])
    toolchains = Path.home() / ".rustup" / "toolchains"
    found = sorted(toolchains.glob("*/lib/rustlib/src/rust/library")) if toolchains.is_dir() else []
    return found[-1:]


@dataclass(frozen=True)
class Corpus:
    """A kind of general code: where a toolchain keeps it, and which languages draft from it."""

    name: str
    languages: frozenset[str]
    suffixes: frozenset[str]
    find_roots: Callable[[], list[Path]]
    skip_suffixes: tuple[str, ...] = ()
    """File names ending so are left out (Go's ``_test.go``, TypeScript declarations)."""

    def roots(self) -> list[Path]:
        try:
            return self.find_roots()
        except OSError as exc:
            log.info("general corpus %s: %s", self.name, exc)
            return []


CORPORA: dict[str, Corpus] = {
    corpus.name: corpus
    for corpus in (
        Corpus("python", frozenset({"python"}), frozenset({".py"}), _python_roots),
        Corpus("javascript", frozenset({"javascript", "typescript", "tsx"}), frozenset({".js", ".mjs", ".cjs", ".ts"}),
               _node_roots, (".min.js", ".d.ts")),
        Corpus("c", frozenset({"c", "cpp"}), frozenset({".h", ".hpp", ".hh", ".tcc", ".c", ".cc", ".cpp"}),
               _header_roots),
        Corpus("go", frozenset({"go"}), frozenset({".go"}), _go_roots, ("_test.go",)),
        Corpus("rust", frozenset({"rust"}), frozenset({".rs"}), _rust_roots),
    )
}
"""Java has none: a JDK keeps its sources zipped (``src.zip``), if at all."""


def corpus_for(language: str | None) -> Corpus | None:
    """The corpus documents in ``language`` (a tree-sitter grammar name) draft from."""
    return next((corpus for corpus in CORPORA.values() if language in corpus.languages), None)


def corpus_files(root: Path, corpus: Corpus = CORPORA["python"]) -> list[Path]:
    """The corpus's files under ``root``, outside test and example folders, in a hash-fixed order."""
    files = []
    for path in root.rglob("*"):
        if path.suffix not in corpus.suffixes or path.name.endswith(corpus.skip_suffixes):
            continue
        rel = path.relative_to(root)
        if _SKIPPED_DIRS.isdisjoint(rel.parts[:-1]) and not path.is_symlink() and path.is_file():
            files.append(path)
    return sorted(files, key=lambda p: (zlib.crc32(p.relative_to(root).as_posix().encode()), p))


def _looks_generated(text: str) -> bool:
    return len(text) > _MAX_MEAN_LINE * (text.count("\n") + 1)


def cache_path(tokenizer_key: str, corpus: Corpus, roots: list[Path], budget: int) -> Path:
    """Where the index of ``corpus`` (found at ``roots``) is kept for one tokenizer and budget.

    Python's minor version is part of the key: its standard library changes with it.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    key = short_hash(tokenizer_key, corpus.name, *map(str, roots), version, str(budget), str(FORMAT))
    return datastore_dir() / "general" / f"{corpus.name}-{key}.npz"


def build(encode: Encode, encode_batch: EncodeBatch | None, files: list[Path], budget: int,
          progress: Progress | None = None) -> Segment | None:
    """Tokenize ``files`` in order until ``budget`` tokens and index them (one segment)."""
    units: list[Unit] = []
    total = 0
    for first in range(0, len(files), _BATCH_FILES):
        texts = []
        for path in files[first : first + _BATCH_FILES]:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                log.info("general corpus: skipping %s: %s", path, exc)
                continue
            if not _looks_generated(text):
                texts.append(text)
        encoded = encode_batch(texts) if encode_batch is not None else [encode(t) for t in texts]
        for ids in encoded:
            take = min(len(ids), budget - total)
            if take > 0:
                units.append(Unit(len(units), as_tokens([]), as_tokens(ids[:take]), as_tokens([])))
                total += take
        if progress is not None:
            progress(total, budget)
        if total >= budget:
            break
    return Segment(units) if units else None


def save(path: Path, segment: Segment, meta: dict[str, object]) -> None:
    write_npz(path, {"meta": np.array(json.dumps({**meta, "format": FORMAT})), **segment.arrays()})


def load(path: Path) -> Segment | None:
    """The saved segment, or None (logged) when absent or unusable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if json.loads(str(data["meta"])).get("format") != FORMAT:
                return None
            return Segment.from_arrays(data["buf"], data["keys"], data["layout"], data["order"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable general corpus cache %s: %s", path, exc)
        return None


def as_index(segment: Segment | None) -> TokenIndex:
    index = TokenIndex()
    if segment is not None:
        index.load_segment(segment)
    return index
