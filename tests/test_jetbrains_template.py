"""The LSP4IJ user-defined server template in editors/jetbrains is valid and consistent.

It mirrors LSP4IJ's template format (template.json read by ServerTemplateJsonDeserializer:
id, name, programArgs per OS, fileTypeMappings with fileType.patterns / fileType.name and
languageId, languageMappings) and must start this server with settings it accepts.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lsp_server.settings import Settings, apply_settings, settings_as_json

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "editors" / "jetbrains"
TEMPLATE_KEYS = {"id", "name", "url", "programArgs", "fileTypeMappings", "languageMappings", "workingDir", "env"}
OS_KEYS = {"default", "windows", "mac", "unix"}
SAMPLES = {
    "app.py": "python",
    "stubs.pyi": "python",
    "index.js": "javascript",
    "mod.mjs": "javascript",
    "view.jsx": "javascriptreact",
    "main.ts": "typescript",
    "view.tsx": "typescriptreact",
    "main.go": "go",
    "Main.java": "java",
    "main.c": "c",
    "main.h": "c",
    "main.cpp": "cpp",
    "main.cc": "cpp",
    "main.hpp": "cpp",
    "main.rs": "rust",
}


def load(name: str) -> Any:
    return json.loads((TEMPLATE_DIR / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    data = load("template.json")
    assert isinstance(data, dict)
    return data


def test_template_has_only_lsp4ij_keys(template: dict[str, Any]) -> None:
    assert set(template) <= TEMPLATE_KEYS
    assert template["id"] == "swiftguard" and template["name"] == "Swiftguard"


def test_command_is_swiftguard_serve(template: dict[str, Any]) -> None:
    program_args = template["programArgs"]
    assert set(program_args) <= OS_KEYS and "default" in program_args
    assert shlex.split(program_args["default"]) == ["swiftguard", "serve"]
    for os_key, command in program_args.items():
        executable, *args = shlex.split(command)
        assert executable in {"swiftguard", "swiftguard.exe"} and args == ["serve"], os_key


def test_serve_is_a_real_subcommand() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "lsp_server", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert "--tcp" in completed.stdout


def test_mappings_are_well_formed(template: dict[str, Any]) -> None:
    mappings = template["fileTypeMappings"]
    assert isinstance(mappings, list) and mappings
    seen: set[str] = set()
    for mapping in mappings:
        assert set(mapping) == {"fileType", "languageId"}
        file_type = mapping["fileType"]
        assert set(file_type) <= {"name", "patterns"} and file_type.get("patterns")
        for pattern in file_type["patterns"]:
            assert isinstance(pattern, str) and pattern.startswith("*.")
            assert pattern not in seen, f"{pattern} is mapped twice"
            seen.add(pattern)


@pytest.mark.parametrize(("filename", "language_id"), sorted(SAMPLES.items()))
def test_mappings_cover_the_languages(template: dict[str, Any], filename: str, language_id: str) -> None:
    matched = [
        mapping["languageId"]
        for mapping in template["fileTypeMappings"]
        if any(fnmatch.fnmatchcase(filename, pattern) for pattern in mapping["fileType"]["patterns"])
    ]
    assert matched == [language_id]


def test_initialization_options_are_known_valid_settings() -> None:
    options = load("initializationOptions.json")
    defaults = settings_as_json(Settings())
    assert isinstance(options, dict) and set(options) == set(defaults), "list every server setting"
    update = apply_settings(Settings(), options)
    assert update.errors == []
    assert update.settings == Settings(), "the template should start from the server's defaults"


def test_settings_match_initialization_options() -> None:
    """LSP4IJ pushes settings.json right after start-up: equal values mean no model reload."""
    settings = load("settings.json")
    assert set(settings) == {"swiftguard"}
    update = apply_settings(Settings(), settings)
    assert update.errors == []
    assert settings["swiftguard"] == load("initializationOptions.json")


def test_readme_gives_the_import_steps() -> None:
    readme = (TEMPLATE_DIR / "README.md").read_text(encoding="utf-8")
    for phrase in ("Languages & Frameworks > Language Servers", "Import from custom template", "0.20.0"):
        assert phrase in readme
