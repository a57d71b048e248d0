"""The local engine: a warm model answering completion requests.

Order of work per request, cheapest first: the typed-ahead cache (no model at all),
then the prompt with KV reuse and greedy decoding under the stop rules.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..api import CompletionRequest, CompletionResult, CompletionStats
from ..datastore.service import hf_encoders, hf_tokenizer_key
from ..datastore.sources import ContextSource
from ..datastore.types import Encode, EncodeBatch
from ..drafthead.head import find_draft_head, shard_dir
from ..syntax import detect_language
from .decoding import Decoder
from .linear import computes_trees_apart
from .loader import LoadedModel
from .prompt import PromptBuilder, newline_token_ids
from .speculation.budget import VerifyCostModel
from .speculation.calibration import cost_model_for
from .speculation.drafter import DrafterConfig, SpeculativeDrafter
from .speculation.head_drafts import HeadProposer
from .speculation.model_draft import HalfPrecisionDraft, ascii_vocabulary
from .stop_rules import StopRuleFactory
from .stopping import tidy_completion
from .typeahead import TypeaheadCache

log = logging.getLogger(__name__)


def verify_cost_model(loaded: LoadedModel, decoder: Decoder) -> VerifyCostModel:
    """This device's verify-cost curve for the loaded model and its kernels (measured once)."""
    vocab = loaded.model.get_output_embeddings().out_features
    return cost_model_for(decoder.verify, loaded.name, vocab, loaded.kernels)


def build_drafter(
    loaded: LoadedModel, decoder: Decoder, prompts: PromptBuilder, config: DrafterConfig,
    retrieval: Sequence[Any] = (),
) -> SpeculativeDrafter:
    """The drafter an engine (or a bench method) speculates with.

    Its tree size follows this device's verify-cost curve (measured once, then read from the
    cache) unless ``config`` fixes it; prompt lookup covers the request's own text; the
    trained draft head (cache dir) joins when one fits the model (``drafter.head_status`` says which);
    a float32 model drafts chains with a float16 copy of itself.
    """
    cost = verify_cost_model(loaded, decoder) if config.fixed_nodes is None else None
    head, head_status = None, "draft head off"
    if config.use_head:
        found, head_status = find_draft_head(loaded.name, int(loaded.model.config.hidden_size), loaded.tokenizer)
        if found is not None:
            head = HeadProposer(found, loaded.model.get_input_embeddings(), loaded.model.get_output_embeddings(),
                                int8=config.int8_head)
        log.info("%s", head_status)
    model_draft = None
    if config.use_model_draft and HalfPrecisionDraft.worth_it(loaded):
        model_draft = HalfPrecisionDraft(loaded.model.get_decoder(), loaded.model.get_output_embeddings(),
                                         ascii_vocabulary(loaded.tokenizer))
    drafter = SpeculativeDrafter(cost, config, retrieval, per_request=ContextSource, split_prompt=prompts.split,
                                 head=head, model_draft=model_draft)
    drafter.head_status = head_status
    drafter.prompt_trees_apart = computes_trees_apart(loaded.model)
    drafter.set_newline_tokens(newline_token_ids(loaded.tokenizer))
    return drafter


class LocalEngine:
    """Implements :class:`lsp_server.api.CompletionEngine` on a loaded transformers model."""

    def __init__(
        self, loaded: LoadedModel, reuse_kv: bool = True, speculation: DrafterConfig | None = None,
        genguard: bool = True,
    ) -> None:
        """``speculation=None`` decodes plainly; pass a ``DrafterConfig`` to speculate.
        ``genguard`` stops with the learned rule when a head matches the model."""
        self.loaded = loaded
        self.prompts = PromptBuilder(loaded.tokenizer)
        self.decoder = Decoder(loaded.model, loaded.tokenizer, self.prompts.stop_ids, reuse_kv=reuse_kv)
        self.typeahead = TypeaheadCache()
        self.stop_rules = StopRuleFactory(loaded, genguard)
        self.drafter: SpeculativeDrafter | None = None
        self._preference_file: Path | None = None
        if speculation is not None:
            self.drafter = build_drafter(loaded, self.decoder, self.prompts, speculation)

    def complete(self, request: CompletionRequest, cancel: threading.Event) -> CompletionResult:
        started = time.perf_counter()
        rest = self.typeahead.lookup(request.document_key, request.prefix, request.suffix)
        if rest is not None:
            stats = CompletionStats(source="typeahead", seconds=time.perf_counter() - started)
            return CompletionResult(rest, stats)
        prompt = self.prompts.build(request.prefix, request.suffix, request.context_tokens)
        language = detect_language(request.document_key, request.language_id)
        rules = self.stop_rules.for_language(language)
        rules.begin(request.prefix, request.suffix)
        out = self.decoder.generate(prompt.ids, request.max_new_tokens, rules, cancel, self.drafter, language)
        stats = CompletionStats(
            new_tokens=len(out.token_ids),
            seconds=time.perf_counter() - started,
            prompt_tokens=out.prompt_tokens,
            reused_prompt_tokens=out.reused_prompt_tokens,
            time_to_first_token=out.time_to_first_token,
            forward_passes=out.forward_passes,
            stop_reason=out.stop_reason,
            speedup_estimate=self._speedup_estimate(out),
        )
        if out.stop_reason == "cancelled":
            return CompletionResult("", stats, cancelled=True)
        text = tidy_completion(out.text, request.suffix)
        self.typeahead.remember(request.document_key, request.prefix, request.suffix, text)
        return CompletionResult(text, stats)

    def encoders(self) -> tuple[Encode, EncodeBatch, str]:
        """How this model tokenizes, for a datastore built to serve it."""
        encode, encode_batch = hf_encoders(self.loaded.tokenizer)
        return encode, encode_batch, hf_tokenizer_key(self.loaded.tokenizer)

    def generations_dir(self) -> Path | None:
        """The draft head's shards of this model, where a build made them."""
        found = shard_dir(self.loaded.name)
        return found if found.is_dir() else None

    def attach_retrieval(self, datastore: Any, preference_file: Path | None = None) -> None:
        """Draft from ``datastore`` too (repository and general code, kept current elsewhere).

        ``preference_file`` keeps the preference cache of this workspace across restarts:
        loaded now, saved when the engine closes.
        """
        if self.drafter is None:
            return
        self.drafter.retrieval = [datastore]
        self._preference_file = preference_file
        if preference_file is not None:
            self.drafter.cache.load(preference_file)

    def retrieval_preview(self, prefix: str, limit: int = 8, document_key: str = "",
                          language_id: str = "") -> list[dict[str, Any]]:
        """What the datastore would draft after ``prefix`` in that document: for users asking
        "why", and tests."""
        if self.drafter is None or not self.drafter.retrieval:
            return []
        context = self.encoders()[0](prefix[-4000:])
        sources = self.drafter.sources_for(detect_language(document_key, language_id))
        candidates = [c for source in sources for c in source.retrieve(context, 16, limit)]
        return [
            {"source": c.source, "text": self.loaded.tokenizer.decode(list(c.tokens)), "count": round(c.count, 3),
             "match_length": c.match_length}
            for c in sorted(candidates, key=lambda c: -c.count)[:limit]
        ]

    def _speedup_estimate(self, out: Any) -> float | None:
        """Decoding speed over plain greedy, which would take one single-token pass per token.

        The single-token pass time comes from this device's measured cost curve; the first
        pass (the prompt) is left out on both sides.
        """
        if self.drafter is None or self.drafter.cost is None or out.forward_passes < 2:
            return None
        decoding_seconds = out.seconds - out.time_to_first_token
        plain_seconds = (len(out.token_ids) - out.accepted_per_pass[0]) * self.drafter.cost(0)
        return round(plain_seconds / decoding_seconds, 2) if decoding_seconds > 0 else None

    def describe(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": self.loaded.name,
            "device": str(self.loaded.device),
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "fim": self.prompts.uses_fim,
            "load_seconds": round(self.loaded.load_seconds, 2),
            "speculation": self.drafter is not None,
            "stop_rule": self.stop_rules.status,
        }
        if self.drafter is not None:
            data["drafter"] = self.drafter.stats.as_json()
            data["draft_head"] = self.drafter.head_status
            data["self_draft"] = self.drafter.model_draft is not None
        return data

    def close(self) -> None:
        if self.drafter is not None and self._preference_file is not None:
            try:
                self.drafter.cache.save(self._preference_file)
            except OSError as exc:
                log.warning("cannot save the preference cache: %s", exc)
        self.decoder.kv.clear()
        self.typeahead.clear()
