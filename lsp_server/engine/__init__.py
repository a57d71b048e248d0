"""The engine: model loading, prompts, decoding and caches.  Imports torch; no LSP here."""

from __future__ import annotations

from .completer import LocalEngine
from .loader import LoadedModel, ModelLoadError, load


def build_engine(
    model: str | None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    progress=lambda _msg: None,
) -> LocalEngine:
    """Load a model and wrap it as a ready :class:`LocalEngine`."""
    return LocalEngine(load(model, device, dtype, trust_remote_code, progress))


__all__ = ["LocalEngine", "LoadedModel", "ModelLoadError", "build_engine", "load"]
