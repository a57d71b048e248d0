"""Model loading refuses bad input with a clear message instead of crashing."""

from __future__ import annotations

import pytest

from lsp_server.engine import ModelLoadError, load
from lsp_server.engine.device import resolve_dtype
from lsp_server.engine.prompt import PromptBuilder


def test_corrupt_gguf_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SWIFTGUARD_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00garbage" * 100)
    with pytest.raises(ModelLoadError, match="cannot read GGUF file"):
        load(str(bad), device="cpu")


def test_missing_path_and_pickle_only_folder_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(str(tmp_path / "nope"), device="cpu")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelLoadError, match="no .safetensors"):
        load(str(tmp_path / "pickled"), device="cpu")


def test_unavailable_device_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load("whatever", device="cuda")


def test_explicit_dtype_wins():
    import torch

    assert resolve_dtype("float32", torch.device("cpu")) is torch.float32


def test_huge_document_prompt_stays_in_budget(tiny_loaded):
    """A 10 MB file: only text near the cursor is tokenized, the prompt fits the budget."""
    builder = PromptBuilder(tiny_loaded.tokenizer)
    line = "value = compute(alpha, beta, gamma)  # a fairly long line of code\n"
    prefix = line * (5_000_000 // len(line))
    prompt = builder.build(prefix, prefix, 1024)
    assert len(prompt.ids) <= 1024
    assert prompt.prefix_chars < 20_000 and prompt.suffix_chars < 10_000
