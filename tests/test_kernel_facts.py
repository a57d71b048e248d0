"""The row-limit probe runs once per machine: its result is kept in the cache dir, keyed by
everything the kernels' numerics depend on, and anything odd in the saved file is probed anew."""

from __future__ import annotations

import json

import torch

from lsp_server.engine import kernel_facts
from lsp_server.engine.kernel_facts import KernelFacts, machine_identity
from lsp_server.engine.linear import (
    _PACK_ROWS_HINT,
    RowInvariantLinear,
    computes_trees_apart,
    install_row_invariant,
    rows_per_call,
)


class _CountingBlocked(RowInvariantLinear):
    """Rows get other bits in calls of more than 32 rows; counts the kernel's calls."""

    calls = 0

    def _product(self, rows: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        out = torch.nn.functional.linear(rows, self.weight, self.bias)
        return out + 1e-3 if rows.shape[0] > 32 else out


def _layer(in_features: int = 16) -> _CountingBlocked:
    layer = torch.nn.Linear(in_features, 8)
    layer.__class__ = _CountingBlocked
    return layer


def test_the_probe_runs_once_then_the_saved_limit_is_used(tmp_path):
    path = tmp_path / "facts.json"
    _CountingBlocked.calls = 0
    assert rows_per_call([_layer()], KernelFacts(path, "machine A")) == 32
    probed = _CountingBlocked.calls
    assert probed > 48  # every probe row alone, then the calls of each candidate size
    layer = _layer()
    assert rows_per_call([layer], KernelFacts(path, "machine A")) == 32
    assert _CountingBlocked.calls == probed and layer.max_rows == 32  # read, not probed
    saved = json.loads(path.read_text())
    assert saved["identity"] == "machine A"
    assert list(saved["facts"].values()) == [{"limit": 32, "exact": True}]
    rows_per_call([_layer(24)], KernelFacts(path, "machine A"))  # another shape is another kind
    assert _CountingBlocked.calls > probed


def test_another_machine_or_a_damaged_fact_is_probed_anew(tmp_path, caplog):
    path = tmp_path / "facts.json"
    rows_per_call([_layer()], KernelFacts(path, "machine A"))
    _CountingBlocked.calls = 0
    assert rows_per_call([_layer()], KernelFacts(path, "machine B")) == 32
    assert _CountingBlocked.calls > 0
    data = json.loads(path.read_text())
    assert data["identity"] == "machine B"
    data["facts"] = {key: {"limit": 7, "exact": True} for key in data["facts"]}  # not a size the probe tries
    path.write_text(json.dumps(data))
    _CountingBlocked.calls = 0
    assert rows_per_call([_layer()], KernelFacts(path, "machine B")) == 32
    assert _CountingBlocked.calls > 0
    path.write_text("{not json")
    with caplog.at_level("WARNING"):
        assert rows_per_call([_layer()], KernelFacts(path, "machine B")) == 32
    assert "unreadable" in caplog.text
    assert json.loads(path.read_text())["facts"]  # rewritten


def test_the_machine_identity_names_the_cpu_threads_and_build(monkeypatch):
    identity = machine_identity()
    assert torch.__version__ in identity and f"threads={torch.get_num_threads()}" in identity
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert machine_identity() != identity  # capping the ISA changes the kernels, so it is another machine


def test_loading_kernels_saves_their_facts_in_the_cache_dir():
    layer = torch.nn.Linear(16, 8).to(torch.bfloat16)
    install_row_invariant(torch.nn.Sequential(layer))
    facts = kernel_facts.this_machine()  # in the tests' own cache dir (conftest)
    assert facts.path.is_file()
    key = f"rows-per-call|packed for {_PACK_ROWS_HINT} rows|{type(layer).__name__}|16|8|True|torch.bfloat16"
    assert facts.get(key)["exact"] in (True, False)


def test_a_model_computes_a_prompts_tree_rows_apart_where_a_layer_splits_its_calls(tmp_path):
    model = torch.nn.Sequential(_layer(), torch.nn.Linear(8, 8))
    model[1].__class__ = RowInvariantLinear
    assert not computes_trees_apart(model)  # one call whatever the rows: the tree rides free
    rows_per_call([model[0]], KernelFacts(tmp_path / "facts.json", "machine A"))
    assert computes_trees_apart(model)
    model[0].max_rows, model[1].prompt_rows = None, 512
    assert computes_trees_apart(model)
