"""The Neovim plugin (editors/neovim) end to end: headless Neovim against the real server.

Each case runs ``nvim --headless --clean -u editors/neovim/tests/e2e.lua`` with a
scenario name; the Lua script drives the editor the way a user would (Insert mode,
typed keys, <Tab>, <Esc>), checks the ghost-text extmarks and the buffer, writes a JSON
result and exits non-zero on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "editors" / "neovim" / "tests" / "e2e.lua"
SOURCE = "import os\n\n\ndef list_files(root):\n    \n"
NVIM = shutil.which("nvim")

pytestmark = pytest.mark.skipif(NVIM is None, reason="nvim is not on PATH")


def run_scenario(scenario: str, tmp_path: Path, model: Path | None = None, timeout: float = 150) -> dict[str, Any]:
    """Run one scenario of e2e.lua in a clean, isolated Neovim and return its JSON result."""
    source = tmp_path / "project" / "example.py"
    source.parent.mkdir()
    source.write_text(SOURCE)
    result_file = tmp_path / "result.json"
    env = {
        **os.environ,
        "SWIFTGUARD_SCENARIO": scenario,
        "SWIFTGUARD_PYTHON": sys.executable,
        "SWIFTGUARD_FILE": str(source),
        "SWIFTGUARD_RESULT": str(result_file),
        "SWIFTGUARD_TIMEOUT_MS": str(int((timeout - 20) * 1000)),
        # Keep Neovim's state (LSP log, shada) out of the user's home.
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    if model is not None:
        env["SWIFTGUARD_TEST_MODEL"] = str(model)
    assert NVIM is not None
    completed = subprocess.run(
        [NVIM, "--headless", "--clean", "-u", str(SCRIPT)],
        cwd=source.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result_file.exists(), f"no result (exit {completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
    result: dict[str, Any] = json.loads(result_file.read_text())
    assert completed.returncode == 0 and result["ok"], json.dumps(result, indent=2)
    return result


def test_ghost_text_type_through_accept_dismiss_cancel_and_popup(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = run_scenario("complete", tmp_path, tiny_model_dir)
    assert result["steps"] == [
        "attached",
        "ready",
        "ghost text shown",
        "typed through",
        "accepted with <Tab>",
        "<Tab> falls through",
        "dismissed on <Esc>",
        "cancelled",
        "multi-line rendering",
        "popup menu",
    ]
    assert result["suggestion"]
    assert result["requests"]["cancelled"] >= 1


def test_missing_command_is_reported(tmp_path: Path) -> None:
    result = run_scenario("missing-command", tmp_path, timeout=60)
    assert "/nonexistent/swiftguard" in result["message"] and "not executable" in result["message"]


def test_crashing_server_is_reported(tmp_path: Path) -> None:
    result = run_scenario("crash", tmp_path, timeout=60)
    assert "exited with code 3" in result["message"]


def test_model_load_failure_is_shown(tmp_path: Path) -> None:
    result = run_scenario("bad-model", tmp_path, timeout=90)
    assert "could not load the model" in result["message"]
