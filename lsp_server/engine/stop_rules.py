"""Which stop rules a completion runs under: GenGuard, the tree-sitter net, the baseline.

GenGuard (a learned head on the model's hidden states) runs when a head matches the
loaded model; the tree-sitter rule runs for the languages it has a grammar for, with or
without GenGuard; documents in other languages fall back to the text-only baseline.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote, urlparse

from ..genguard import find_head, genguard_rule
from ..syntax import SyntaxStop, detect_language
from .loader import LoadedModel
from .stopping import StopRules, baseline_rules

log = logging.getLogger(__name__)


class StopRuleFactory:
    """Builds the rules for each request; the head is looked up once per model."""

    def __init__(self, loaded: LoadedModel, use_genguard: bool) -> None:
        self.loaded = loaded
        hidden_size = loaded.model.config.hidden_size
        path, self.status = find_head(loaded.name, hidden_size, loaded.tokenizer)
        if not use_genguard:
            self.status = "GenGuard off (setting): syntax stop rule only"
        self.use_genguard = use_genguard and path is not None
        self._hidden_size = hidden_size

    def for_document(self, document_key: str, language_id: str) -> StopRules:
        path = unquote(urlparse(document_key).path) if document_key else None
        language = detect_language(path, language_id or None)
        if language is None:
            return baseline_rules()
        rules = []
        if self.use_genguard:
            guard = genguard_rule(self.loaded.name, self._hidden_size, self.loaded.tokenizer, language)
            if guard is not None:
                rules.append(guard)
        rules.append(SyntaxStop(language))
        return StopRules(rules)
