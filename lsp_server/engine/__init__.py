"""The engine: model loading, prompts, decoding and caches.  Imports torch; no LSP here."""

from __future__ import annotations

from collections.abc import Callable

from .completer import LocalEngine
from .loader import LoadedModel, ModelLoadError, load
from .speculation.drafter import DrafterConfig


def build_engine(
    model: str | None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    speculation: bool = True,
    genguard: bool = True,
    progress: Callable[[str], None] = lambda _msg: None,
    self_draft: bool = True,
) -> LocalEngine:
    """Load a model and wrap it as a ready :class:`LocalEngine`; ``self_draft`` lets a
    float32 model draft with a float16 copy of itself when speculating."""
    loaded = load(model, device, dtype, trust_remote_code, progress, draft_copy=speculation and self_draft)
    if speculation:
        progress("measuring verification cost on this device (first start only)")
    config = DrafterConfig(use_model_draft=self_draft) if speculation else None
    return LocalEngine(loaded, speculation=config, genguard=genguard)


__all__ = ["LocalEngine", "LoadedModel", "ModelLoadError", "build_engine", "load"]
