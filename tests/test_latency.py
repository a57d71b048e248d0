"""``swiftguard latency`` measures the engine the server runs: speculating unless told not to."""

from __future__ import annotations

import pytest

from lsp_server.bench import latency


@pytest.mark.parametrize("speculation", [True, False])
def test_latency_measures_the_servers_engine(tiny_model_dir, speculation):
    result = latency.run(str(tiny_model_dir), "cpu", "float32", 1, 8, 256, None, speculation)
    assert result["model"]["speculation"] is speculation
    assert result["context_tokens"] == 256 and 0 < result["prompt_tokens"] <= 256
    assert result["ttft_without_reuse_seconds"] > 0 and result["reused_prompt_tokens"] > 0
    assert len(result["reuse_output_equal"]) == 1
