"""A draft head says which repositories it learned from, and a benchmark refuses to measure
it on one of them (it would draft the removed functions from memory)."""

from __future__ import annotations

import json

import pytest
import torch

from lsp_server.bench.speed import refuse_head_trained_on
from lsp_server.drafthead.head import DraftHead, DraftHeadInfo, head_path_for, save_draft_head
from lsp_server.drafthead.provenance import repository_name, trained_on_workspace, workspace_names

MODEL = "Qwen/Qwen2.5-Coder-0.5B-Instruct"


@pytest.mark.parametrize("name, expected", [("requests-2.32.3", "requests"), ("Requests", "requests"),
                                            ("site-packages/requests", "requests"), ("_pytest", "pytest"),
                                            ("typing_extensions-4.12.2", "typing-extensions"),
                                            ("zope.interface-7.0", "zope-interface"), ("py3-compat", "py3-compat")])
def test_repository_names_ignore_versions_case_and_separators(name, expected):
    assert repository_name(name) == expected


def test_a_workspace_goes_by_its_folder_packages_and_package_json(tmp_path):
    root = tmp_path / "requests-2.32.3"
    (root / "src" / "requests").mkdir(parents=True)
    (root / "src" / "requests" / "__init__.py").write_text("")
    (root / "docs").mkdir()  # not a package
    (root / "package.json").write_text(json.dumps({"name": "left-pad"}))
    assert workspace_names(root) == {"requests", "left-pad"}
    assert trained_on_workspace({"repos": ["Left_Pad", "numpy"]}, root) == {"left-pad"}
    assert trained_on_workspace({"repos": ["numpy"]}, root) == set()
    assert trained_on_workspace({}, root) is None  # a head that does not say


def _head(directory, training):
    head = DraftHead(8, 4, torch.arange(3))
    save_draft_head(head_path_for(MODEL, directory), head, DraftHeadInfo(MODEL, 8, "tok", 4, training=training))


def test_the_bench_refuses_a_head_trained_on_the_workspace(tmp_path, capsys):
    workspace = tmp_path / "requests-2.32.3"
    workspace.mkdir()
    heads = tmp_path / "heads"
    refuse_head_trained_on(workspace, MODEL, ["ar", "swift"], heads)  # no head at all: nothing to check
    _head(heads, {"repos": ["numpy", "requests"]})
    with pytest.raises(SystemExit, match="trained on requests"):
        refuse_head_trained_on(workspace, MODEL, ["ar", "pld", "swift"], heads)
    refuse_head_trained_on(workspace, MODEL, ["ar", "swift-nohead"], heads)  # no method drafts with it
    refuse_head_trained_on(tmp_path / "flask", MODEL, ["swift"], heads)  # another repository
    _head(heads, {"sources": ["python=/usr/lib/python3"]})
    refuse_head_trained_on(workspace, MODEL, ["swift"], heads)
    assert "does not list the repositories" in capsys.readouterr().err
