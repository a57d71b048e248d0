"""GenGuard: a learned stop rule on the base model's final-norm hidden state (CodeFast).

- ``head``: the classifier (hidden -> 2) and its safetensors file with metadata;
- ``rule``: CodeFast's line voting as a ``StopRule``;
- ``data`` / ``train``: automatic training data (tree-sitter labels) and training;
- ``cli``: ``swiftguard genguard build-data | train | eval``.

Heads for known base models ship in ``heads/``; :func:`genguard_rule` finds the one for
the loaded model or returns None (the caller then relies on the syntax rule alone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .head import GuardHead, HeadError, HeadInfo, load_head, model_key, read_info, save_head, tokenizer_hash
from .rule import GenGuardStop

log = logging.getLogger(__name__)

HEADS_DIR = Path(__file__).parent / "heads"


def head_path_for(model_name: str) -> Path:
    """Where the shipped head of ``model_name`` lives (whether or not it exists)."""
    return HEADS_DIR / f"{model_key(model_name)}.safetensors"


def find_head(model_name: str, hidden_size: int, tokenizer: Any, heads_dir: Path = HEADS_DIR,
              tokenizer_key: str | None = None) -> tuple[Path | None, str]:
    """The head file for this model and why (or why not): (path or None, a line for status)."""
    key = model_key(model_name)
    for path in sorted(heads_dir.glob("*.safetensors")):
        try:
            info = read_info(path)
        except HeadError as exc:
            log.warning("%s", exc)
            continue
        if model_key(info.base_model) != key:
            continue
        if info.hidden_size != hidden_size:
            return None, (f"GenGuard head {path.name} has hidden size {info.hidden_size}, "
                          f"the model {hidden_size}: not used")
        if info.tokenizer_hash != (tokenizer_key or tokenizer_hash(tokenizer)):
            return None, f"GenGuard head {path.name} was trained with another tokenizer: not used"
        return path, f"GenGuard head {path.name} (threshold {info.threshold:g})"
    return None, f"no GenGuard head for {model_name}: syntax stop rule only"


@dataclass(frozen=True)
class LoadedGuard:
    """A head matched to the loaded model, read once: rules for each completion come from it.

    Looking a head up (hashing the tokenizer, reading safetensors metadata) costs about as
    much as a forward pass, so it is done when the model loads, not per keystroke.
    """

    head: GuardHead
    info: HeadInfo
    tokenizer: Any

    def rule(self, language: str | None = None, threshold: float | None = None,
             min_new_tokens: int = 10) -> GenGuardStop:
        """A fresh rule for one completion in ``language``.

        ``language`` is the document's grammar name (``syntax.detect_language``): the head is
        trained on several languages and applies to all of them; with a known grammar, stop
        votes inside a bracket or string the output opened are overruled.  Metadata may carry
        per-language thresholds, which win over the global one; ``threshold`` (a user setting)
        overrides both.
        """
        if threshold is None:
            threshold = float(self.info.training.get("thresholds", {}).get(language or "", self.info.threshold))
        return GenGuardStop(self.head, self.tokenizer, threshold, min_new_tokens, language=language)


def load_guard(loaded_model_name: str, hidden_size: int, tokenizer: Any,
               heads_dir: Path = HEADS_DIR) -> tuple[LoadedGuard | None, str]:
    """The head for the loaded model (or None) and a line saying which, for status."""
    tokenizer_key = tokenizer_hash(tokenizer)
    path, reason = find_head(loaded_model_name, hidden_size, tokenizer, heads_dir, tokenizer_key)
    if path is None:
        log.info("%s", reason)
        return None, reason
    head, info = load_head(path, hidden_size, tokenizer_key)
    return LoadedGuard(head, info, tokenizer), reason


def genguard_rule(loaded_model_name: str, hidden_size: int, tokenizer: Any, language: str | None = None,
                  threshold: float | None = None, min_new_tokens: int = 10,
                  heads_dir: Path = HEADS_DIR) -> GenGuardStop | None:
    """One-shot: the GenGuard stop rule for the loaded model, or None when no head matches it."""
    guard, _reason = load_guard(loaded_model_name, hidden_size, tokenizer, heads_dir)
    return guard.rule(language, threshold, min_new_tokens) if guard is not None else None


__all__ = ["GenGuardStop", "GuardHead", "HeadError", "HeadInfo", "LoadedGuard", "find_head", "genguard_rule",
           "head_path_for", "load_guard", "load_head", "read_info", "save_head", "tokenizer_hash"]
