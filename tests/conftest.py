from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_model import build_tiny_model  # noqa: E402

from lsp_server.paths import cache_root  # noqa: E402

# The user's cache (where `swiftguard model prepare` put the default model) stays
# readable to the tests that need it; everything else a test run writes (verify-cost
# calibrations of throwaway models, persisted caches) goes to a scratch dir.
USER_CACHE = cache_root()
os.environ["SWIFTGUARD_CACHE_DIR"] = tempfile.mkdtemp(prefix="swiftguard-test-cache-")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Path):
    from lsp_server.engine import load

    return load(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_loaded_bf16(tiny_model_dir: Path):
    from lsp_server.engine import load

    return load(str(tiny_model_dir), device="cpu", dtype="bfloat16")


def assert_same_cache(ours, theirs) -> None:
    """Two KV caches hold the same keys and values (to fp32 rounding)."""
    import torch

    assert len(ours.layers) == len(theirs.layers)
    for a, b in zip(ours.layers, theirs.layers):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-4)
