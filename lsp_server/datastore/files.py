"""Which files of a workspace are indexed, and reading them without trusting the disk.

Only regular source files under the root: ``.gitignore`` files (the root's and nested
ones) and the usual generated or vendored folders are skipped, symlinks are never
followed (their targets inside the root are indexed under their own path; outside it
they are out of scope), binary, undecodable and huge files are skipped.  Reading opens
with ``O_NOFOLLOW | O_NONBLOCK`` and checks the file type on the open descriptor, so a
file swapped for a symlink or a fifo between listing and reading is refused, not read or
waited on.  Every failure is logged and skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pathspec

from .repository import FileContent, FileStamp

log = logging.getLogger(__name__)

IGNORED_DIRS = frozenset({
    ".git", ".hg", ".svn", ".bzr", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".nox",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".eggs", "site-packages", "build", "dist", ".idea",
    ".gradle", "target", ".next", ".cache",
})
SOURCE_SUFFIXES = frozenset({
    ".py", ".pyi", ".pyx", ".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".go", ".rs", ".java", ".kt",
    ".kts", ".scala", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cs", ".rb", ".php", ".swift",
    ".m", ".mm", ".lua", ".sh", ".bash", ".zsh", ".sql", ".r", ".jl", ".dart", ".ex", ".exs", ".erl",
    ".hs", ".ml", ".vue", ".svelte", ".html", ".css", ".scss", ".toml", ".yaml", ".yml", ".cfg", ".ini",
    ".md", ".rst",
})
SOURCE_NAMES = frozenset({"Makefile", "Dockerfile", "CMakeLists.txt", "Justfile"})
_BINARY_PROBE = 8192


def is_source_name(name: str) -> bool:
    return name in SOURCE_NAMES or os.path.splitext(name)[1].lower() in SOURCE_SUFFIXES


class Workspace:
    """A workspace folder: relative POSIX paths in, file contents out."""

    def __init__(self, root: Path, max_file_bytes: int = 1_000_000, max_files: int = 200_000) -> None:
        self.root = Path(os.path.realpath(root))
        self._spelled = os.path.abspath(root)  # clients may name files through a symlinked root
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self._specs: dict[str, pathspec.GitIgnoreSpec | None] = {}

    def relative(self, path: str | os.PathLike[str]) -> str | None:
        """``path`` (absolute, or relative to the root) as a root-relative POSIX path, or
        None when it is the root itself, outside it, or reached through a symlinked folder."""
        absolute = os.path.normpath(os.path.join(self.root, path))
        for root in (str(self.root), self._spelled):
            rel = os.path.relpath(absolute, root)
            if rel != "." and rel != ".." and not rel.startswith(".." + os.sep):
                break
        else:
            return None
        parent = os.path.dirname(os.path.join(self.root, rel))
        if os.path.realpath(parent) != parent:
            return None  # a symlink on the way
        return rel.replace(os.sep, "/")

    def invalidate_ignores(self) -> None:
        """Forget the parsed ``.gitignore`` files (one of them changed)."""
        self._specs.clear()

    def _spec(self, rel_dir: str) -> pathspec.GitIgnoreSpec | None:
        if rel_dir not in self._specs:
            spec = None
            path = self.root / rel_dir / ".gitignore"
            try:
                if path.is_file() and not path.is_symlink():
                    spec = pathspec.GitIgnoreSpec.from_lines(path.read_text(errors="replace").splitlines())
            except (OSError, ValueError) as exc:
                log.info("ignoring unreadable %s: %s", path, exc)
            self._specs[rel_dir] = spec
        return self._specs[rel_dir]

    def is_ignored(self, rel: str, is_dir: bool = False) -> bool:
        parts = rel.split("/")
        if any(part in IGNORED_DIRS for part in (parts if is_dir else parts[:-1])):
            return True
        for depth in range(len(parts)):
            spec = self._spec("/".join(parts[:depth]))
            if spec is not None:
                tail = "/".join(parts[depth:]) + ("/" if is_dir else "")
                if spec.match_file(tail):
                    return True
        return False

    def wanted(self, rel: str) -> bool:
        """A path whose file would be indexed if it is a readable regular source file."""
        return is_source_name(rel.rsplit("/", 1)[-1]) and not self.is_ignored(rel)

    def walk(self, rel_dir: str = "") -> Iterator[str]:
        """Candidate files under ``rel_dir``, pruning ignored folders; symlinks are skipped."""
        stack = [rel_dir]
        seen = 0
        while stack:
            current = stack.pop()
            try:
                with os.scandir(self.root / current) as entries:
                    listing = sorted(entries, key=lambda e: e.name)
            except OSError as exc:
                log.info("cannot list %s: %s", self.root / current, exc)
                continue
            subdirs = []
            for entry in listing:
                rel = f"{current}/{entry.name}" if current else entry.name
                try:
                    if entry.is_symlink():
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name not in IGNORED_DIRS and not (Path(entry.path) / "pyvenv.cfg").exists() \
                                and not self.is_ignored(rel, is_dir=True):
                            subdirs.append(rel)
                    elif entry.is_file(follow_symlinks=False) and self.wanted(rel):
                        seen += 1
                        if seen > self.max_files:
                            log.warning("more than %d files in %s; the rest is not indexed", self.max_files, self.root)
                            return
                        yield rel
                except OSError as exc:
                    log.info("skipping %s: %s", rel, exc)
            stack.extend(reversed(subdirs))

    def stat(self, rel: str) -> os.stat_result | None:
        try:
            return os.stat(self.root / rel, follow_symlinks=False)
        except OSError:
            return None

    def read(self, rel: str) -> FileContent | None:
        """The file's text and stamp, or None (logged) if it is not an indexable source file."""
        path = self.root / rel
        if self.relative(path) != rel:
            log.info("skipping %s: reached through a symlink", rel)
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            log.info("skipping %s: %s", rel, exc)
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                log.info("skipping %s: not a regular file", rel)
                return None
            if info.st_size > self.max_file_bytes:
                log.info("skipping %s: %d bytes (limit %d)", rel, info.st_size, self.max_file_bytes)
                return None
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read(self.max_file_bytes + 1)
        except OSError as exc:
            log.info("skipping %s: %s", rel, exc)
            return None
        finally:
            os.close(fd)
        if len(data) > self.max_file_bytes:
            log.info("skipping %s: it grew past %d bytes", rel, self.max_file_bytes)
            return None
        if b"\0" in data[:_BINARY_PROBE]:
            log.info("skipping %s: binary", rel)
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            log.info("skipping %s: not UTF-8 (%s)", rel, exc.reason)
            return None
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        return FileContent(text.removeprefix("\ufeff"), FileStamp(info.st_mtime_ns, len(data), digest))
