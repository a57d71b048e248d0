"""Which stop rules a completion runs under: GenGuard, the tree-sitter net, the baseline.

GenGuard (a learned head on the model's hidden states) runs when a head matches the
loaded model; the tree-sitter rule runs for the languages it has a grammar for, with or
without GenGuard; documents in other languages fall back to the text-only baseline.
"""

from __future__ import annotations

import logging

from ..genguard import LoadedGuard, load_guard
from ..stop_rule import StopRule
from ..syntax import SyntaxStop
from .loader import LoadedModel
from .stopping import StopRules, baseline_rules

log = logging.getLogger(__name__)


class StopRuleFactory:
    """Builds the rules for each request; the head is read once per model."""

    def __init__(self, loaded: LoadedModel, use_genguard: bool) -> None:
        self.guard: LoadedGuard | None = None
        if use_genguard:
            self.guard, self.status = load_guard(loaded.name, loaded.model.config.hidden_size, loaded.tokenizer)
        else:
            self.status = "GenGuard off (setting): syntax stop rule only"

    def for_language(self, language: str | None) -> StopRules:
        """The rules for a document in ``language`` (a grammar name; None: unknown)."""
        if language is None:
            return baseline_rules()
        rules: list[StopRule] = [SyntaxStop(language)]
        if self.guard is not None:
            rules.insert(0, self.guard.rule(language))
        return StopRules(rules)
