"""Which workspace files are indexed, and reading them when the disk misbehaves."""

from __future__ import annotations

import os
from pathlib import Path

from lsp_server.datastore.files import Workspace


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_walk_honours_gitignore_defaults_and_venvs(tmp_path):
    write(tmp_path / ".gitignore", "*.log.py\ngenerated/\n")
    write(tmp_path / "pkg" / ".gitignore", "local_*.py\n!local_keep.py\n")
    for rel in ["a.py", "pkg/b.ts", "pkg/local_x.py", "pkg/local_keep.py", "x.log.py", "generated/g.py",
                "node_modules/m.js", ".git/config.py", "build/out.py", "pkg/__pycache__/c.py", "env/lib.py",
                "notes.bin", "README.md"]:
        write(tmp_path / rel, "x = 1\n")
    write(tmp_path / "env" / "pyvenv.cfg", "home = /usr\n")
    workspace = Workspace(tmp_path)
    assert sorted(workspace.walk()) == ["README.md", "a.py", "pkg/b.ts", "pkg/local_keep.py"]
    assert workspace.is_ignored("generated/new.py") and not workspace.is_ignored("src/new.py")


def test_symlinks_are_not_followed_out_of_the_root_nor_in_loops(tmp_path):
    outside = tmp_path / "outside"
    write(outside / "secret.py", "TOKEN = 1\n")
    root = tmp_path / "root"
    write(root / "a.py", "a = 1\n")
    (root / "out").symlink_to(outside)
    (root / "secret.py").symlink_to(outside / "secret.py")
    (root / "loop").symlink_to(root / "loop")
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root)
    workspace = Workspace(root)
    assert list(workspace.walk()) == ["a.py"]
    assert workspace.read("secret.py") is None
    assert workspace.read("out/secret.py") is None
    assert workspace.read("loop/x.py") is None
    assert workspace.relative(outside / "secret.py") is None
    assert workspace.relative(root / "out" / "secret.py") is None
    assert workspace.relative("../outside/secret.py") is None
    assert workspace.relative(root / "sub" / "a.py") == "sub/a.py"


def test_binary_huge_undecodable_fifo_and_vanished_files_are_skipped(tmp_path):
    write(tmp_path / "ok.py", "\ufeffé = 1\n")
    write(tmp_path / "binary.py", b"x = 1\n\0\1\2")
    write(tmp_path / "huge.py", "x" * 2000)
    write(tmp_path / "latin1.py", "café = 1\n".encode("latin-1"))
    os.mkfifo(tmp_path / "fifo.py")
    workspace = Workspace(tmp_path, max_file_bytes=1000)
    content = workspace.read("ok.py")
    assert content.text == "é = 1\n" and content.stamp.size == len("\ufeffé = 1\n".encode())
    for rel in ["binary.py", "huge.py", "latin1.py", "fifo.py", "missing.py"]:
        assert workspace.read(rel) is None, rel


def test_unreadable_folders_are_skipped(tmp_path, monkeypatch):
    write(tmp_path / "a.py", "a = 1\n")
    write(tmp_path / "locked" / "b.py", "b = 1\n")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert list(Workspace(tmp_path).walk()) == ["a.py"]
