"""Which repositories a draft head learned from, so that a benchmark never measures it on them.

``swiftguard drafthead build`` reads this machine's installed packages by default, and a
benchmarked repository is often one of them (``requests`` comes with transformers): a head
that saw the model's own completions of the very functions the benchmark removes would
draft them from memory.  So ``train`` writes the names of the repositories it trained on
into the head's metadata, ``--exclude-repo`` leaves named ones out, and ``swiftguard bench
--workspace`` refuses a head whose list names the workspace.  Names are compared without
case, version suffix or the difference between ``-``, ``_`` and ``.``: the sdist folder
``requests-2.32.3`` and the installed package ``requests`` are one repository.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

_VERSION = re.compile(r"-v?\d[\w.+!-]*$")


def repository_name(name: str) -> str:
    """``name``'s last path part without a version suffix, lower case, separators as ``-``."""
    base = _VERSION.sub("", name.strip("/").split("/")[-1])
    return re.sub(r"[-_.]+", "-", base.lower()).strip("-")


def repository_names(names: Iterable[str]) -> set[str]:
    return {repository_name(name) for name in names} - {""}


def workspace_names(root: Path) -> set[str]:
    """The names a workspace goes by: its folder's, its top-level Python packages' (at the
    root or under ``src/``) and its ``package.json``'s."""
    names = [root.name]
    for parent in (root, root / "src"):
        if parent.is_dir():
            names += [child.name for child in parent.iterdir() if (child / "__init__.py").is_file()]
    try:
        package = json.loads((root / "package.json").read_text(encoding="utf-8"))
        if isinstance(package, dict) and isinstance(package.get("name"), str):
            names.append(package["name"])
    except (OSError, ValueError):
        pass
    return repository_names(names)


def trained_on_workspace(training: dict, root: Path) -> set[str] | None:
    """The workspace's names that a head's training summary lists among its repositories;
    None when the summary lists none (a head trained before the list was kept)."""
    repos = training.get("repos")
    if not isinstance(repos, list):
        return None
    return workspace_names(root) & repository_names(str(repo) for repo in repos)


def other_repository(root: Path | None) -> Callable[[str], bool]:
    """Whether a repository name is none of the names the workspace at ``root`` goes by (any,
    without a workspace)."""
    names = workspace_names(root) if root is not None else set()
    return lambda name: repository_name(name) not in names
