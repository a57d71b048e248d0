"""The decoding methods a benchmark compares, all on one loaded model and one prompt.

- ``ar``: plain greedy ``generate`` from transformers (no assistant): the reference.
- ``pld``: transformers' prompt lookup decoding (``prompt_lookup_num_tokens``).
- ``ar-stopstrings``: plain greedy ``generate`` that stops at the conventional stop strings
  of the task's language (HumanEval's for Python, MultiPL-E's for the others) and ignores
  ``--stop``: the baseline a user gets without a learned or syntactic stop rule.
- ``swift``: this engine's speculative decoder; ``swift-<ablation>`` variants switch one
  component off (``nocache``, ``norecycle``, ``notiming``, ``nohead``, ``bf16head``, ``seqhead``, ``nolookahead``,
  ``norecalibrate``, ``noprompttree``, ``noscreen`` (the LM head read in full every pass),
  ``nooffpath`` (Token Recycling learns from the accepted path only),
  ``fixed16``...).
- ``ceiling``: the same verifier fed by a drafter that is told ``ar``'s output: each pass
  drafts the true next tokens as one chain, as many as this device's verify-cost curve
  says pay.  No real drafter can do better with this verifier, so it shows how much of a
  gap to a target is drafting and how much is the hardware (the prompt's prefill, the
  cost of a bigger pass).

Every method sees the same prompt ids and (but ``ar-stopstrings``) the same stop rule,
applied as it decodes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StopStringCriteria, StoppingCriteria, StoppingCriteriaList

from ..engine.completer import build_drafter, verify_cost_model
from ..engine.decoding import Decoder
from ..engine.loader import LoadedModel
from ..engine.prompt import PromptBuilder
from ..engine.speculation.budget import OnlineCost, best_prefix
from ..engine.speculation.draft_tree import Draft, DraftTree, build_tree
from ..engine.speculation.drafter import DrafterConfig, RetrievalSource
from ..engine.speculation.verify import Verified
from ..stop_rule import StopRule
from .exactness import CheckedVerifier


@dataclass
class MethodRun:
    text: str
    new_tokens: int
    seconds: float
    forward_passes: int
    accepted_per_pass: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    first_token_seconds: float = 0.0
    """Time to the first new token: the prompt's prefill, the same work for every method."""
    reused_prompt_tokens: int = 0
    """Prompt tokens whose keys and values a decoder kept from its last request (``kv_reuse``)."""


class _RuleCriteria(StoppingCriteria):
    """Applies one of our stop rules inside ``generate``; remembers where to cut.

    Rules that read hidden states (GenGuard) get them from a hook on the model's final
    norm: the last pass's rows that predicted this step's new tokens (its last row for
    the prompt pass; the first rows for a prompt-lookup verification pass, which feeds
    the last token and then the candidates).
    """

    def __init__(self, rule: StopRule, decode: Callable[[list[int]], str], prompt_length: int,
                 norm: torch.nn.Module) -> None:
        self.rule = rule
        self.decode = decode
        self.prompt_length = prompt_length
        self.keep_chars: int | None = None
        self.stopped_after: int | None = None
        """New tokens up to and including the one the rule stopped at: a prompt-lookup pass
        may have accepted more, which plain decoding would never have produced."""
        self._seen = 0
        self._states: torch.Tensor | None = None
        self._hook = norm.register_forward_hook(self._capture)

    def _capture(self, _module: Any, _inputs: Any, output: torch.Tensor) -> None:
        self._states = output[0]

    def close(self) -> None:
        self._hook.remove()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[0, self.prompt_length :].tolist()
        fresh = len(new) - self._seen
        states = self._states
        hidden = None
        if states is not None:
            hidden = states[-1:] if self._seen == 0 else states[:fresh]
        seen, self._seen = self._seen, len(new)
        decision = None
        for index in range(seen, len(new)):  # one token at a time, to know which one stopped it
            row = index - seen
            decision = self.rule.step(self.decode(new[: index + 1]), [new[index]],
                                      None if hidden is None else hidden[row : row + 1])
            if decision is not None:
                self.keep_chars, self.stopped_after = decision.keep_chars, index + 1
                break
        return torch.full((input_ids.shape[0],), decision is not None, dtype=torch.bool, device=input_ids.device)


class _PassCounter:
    """Counts forward passes of a module through a hook; notes when the second one began
    (the end of the prompt pass, which yields the first new token)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        self.second_pass_at: float | None = None
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, *_args: Any) -> None:
        self.count += 1
        if self.count == 2:
            self.second_pass_at = time.perf_counter()

    def close(self) -> None:
        self._handle.remove()


STOP_STRINGS: dict[str, list[str]] = {
    "python": ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"],
    "javascript": ["\nfunction ", "\n/*", "\n//", "\nconsole.log"],
    "go": ["\nfunc ", "struct", "\n// "],
    "java": ["\n    }\n"],
}
"""Per language, the stop strings of the usual harnesses; others (C, C++, Rust) stop at ``\n}``."""


def stop_strings(language: str) -> list[str]:
    language = {"typescript": "javascript", "tsx": "javascript"}.get(language, language)
    return STOP_STRINGS.get(language, ["\n}"])


def cut_at_stop_string(text: str, strings: Sequence[str]) -> str:
    """The text before the first stop string (what a harness keeps)."""
    ends = [index for index in (text.find(s) for s in strings) if index != -1]
    return text[: min(ends)] if ends else text


class GenerateMethod:
    """``ar``, ``pld`` and ``ar-stopstrings``: transformers' own ``generate``."""

    def __init__(self, loaded: LoadedModel, stop_ids: frozenset[int], prompt_lookup: int | None,
                 use_stop_strings: bool = False) -> None:
        self.loaded = loaded
        self.stop_ids = stop_ids
        self.prompt_lookup = prompt_lookup
        self.use_stop_strings = use_stop_strings
        # Built once per language, as a server would: building one scans the whole
        # vocabulary (about 2 s here), which ``generate(stop_strings=...)`` redoes per call.
        self._stop_criteria: dict[tuple[str, ...], StopStringCriteria] = {}

    def run(self, prompt: Sequence[int], max_new_tokens: int, rule: StopRule | None,
            language: str = "python") -> MethodRun:
        tokenizer = self.loaded.tokenizer
        strings = stop_strings(language) if self.use_stop_strings else []
        if strings:
            rule = None  # the stop strings are this baseline's whole stop rule
        ids = torch.tensor([list(prompt)], device=self.loaded.device)
        norm = self.loaded.model.get_decoder().norm
        criteria = _RuleCriteria(rule, tokenizer.decode, len(prompt), norm) if rule is not None else None
        kwargs: dict[str, Any] = {}
        if self.prompt_lookup:
            kwargs["prompt_lookup_num_tokens"] = self.prompt_lookup
        stopping = [criteria] if criteria else []
        if strings:
            key = tuple(strings)
            if key not in self._stop_criteria:
                self._stop_criteria[key] = StopStringCriteria(tokenizer, strings)
            stopping.append(self._stop_criteria[key])
        counter = _PassCounter(self.loaded.model.get_decoder())
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                out = self.loaded.model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                    temperature=None, top_p=None, top_k=None,
                    eos_token_id=sorted(self.stop_ids), pad_token_id=tokenizer.pad_token_id or sorted(self.stop_ids)[0],
                    stopping_criteria=StoppingCriteriaList(stopping), **kwargs,
                )
        finally:
            counter.close()
            if criteria is not None:
                criteria.close()
        seconds = time.perf_counter() - started
        first_token = seconds if counter.second_pass_at is None else counter.second_pass_at - started
        new = out[0, len(prompt) :].tolist()
        if criteria is not None and criteria.stopped_after is not None:
            new = new[: criteria.stopped_after]
        ends = [i for i, token in enumerate(new) if token in self.stop_ids]
        new = new[: ends[0]] if ends else new
        text = tokenizer.decode(new)
        if criteria is not None and criteria.keep_chars is not None:
            text = text[: criteria.keep_chars]
        text = cut_at_stop_string(text, strings)
        return MethodRun(text, len(new), seconds, counter.count, token_ids=new, first_token_seconds=first_token)


ABLATIONS: dict[str, dict[str, Any]] = {
    "": {},
    "nocache": {"use_cache": False},
    "norecycle": {"use_recycling": False},
    "nooffpath": {"recycle_off_path": False},
    "notiming": {"timing_control": False},
    "nogenerations": {"left_out_sources": ("generations",)},
    "nohead": {"use_head": False},
    "bf16head": {"int8_head": False},
    "seqhead": {"head_document_order": False},
    "nomodel": {"use_model_draft": False},
    "nolookahead": {"head_lookahead": False},
    "norecalibrate": {"recalibrate": False},
    "noprompttree": {"prompt_pass": False},
    "noretrieval": {},
    "noscreen": {},
    "fixed4": {"fixed_nodes": 4},
    "fixed16": {"fixed_nodes": 16},
    "fixed64": {"fixed_nodes": 64},
}


def swift_ablation(name: str) -> str | None:
    """The ablation a ``swift``/``swift-<ablation>`` method name asks for ("" for the whole
    engine); None for other methods."""
    if name == "swift" or name.startswith("swift-"):
        return name.removeprefix("swift").removeprefix("-")
    return None


def uses_model_draft(name: str) -> bool:
    """Whether method ``name`` drafts with the model's float16 copy, whose weights the load
    must keep (``loader.load(draft_copy=True)``, about 1.1 GB for the default model)."""
    ablation = swift_ablation(name)
    return ablation in ABLATIONS and DrafterConfig(**ABLATIONS[ablation]).use_model_draft


def _run_decoder(decoder: Decoder, drafter: Any, prompt: Sequence[int], max_new_tokens: int, rule: StopRule | None,
                 language: str) -> MethodRun:
    """One completion with this engine's decoder; time spent by ``--check-exact`` is left out."""
    check = decoder.verify if isinstance(decoder.verify, CheckedVerifier) else None
    calls_before = len(check.calls) if check is not None else 0
    out = decoder.generate(prompt, max_new_tokens, rule, None, drafter, language)
    checked = check.calls[calls_before:] if check is not None else []
    return MethodRun(out.text, len(out.token_ids), out.seconds - sum(checked), out.forward_passes,
                     out.accepted_per_pass, out.token_ids, out.time_to_first_token - sum(checked[:1]),
                     out.reused_prompt_tokens)


class PlainMethod:
    """This engine's decoder without drafts: what a user gets with speculation off."""

    def __init__(self, loaded: LoadedModel, stop_ids: frozenset[int], reuse_kv: bool = False) -> None:
        self.decoder = Decoder(loaded.model, loaded.tokenizer, stop_ids, reuse_kv=reuse_kv)

    def run(self, prompt: Sequence[int], max_new_tokens: int, rule: StopRule | None,
            language: str = "python") -> MethodRun:
        return _run_decoder(self.decoder, None, prompt, max_new_tokens, rule, language)


class SwiftMethod:
    """This engine's decoder; one drafter for the whole run, as in an editor session."""

    def __init__(self, loaded: LoadedModel, stop_ids: frozenset[int], ablation: str,
                 retrieval: Sequence[RetrievalSource], reuse_kv: bool = False) -> None:
        """``reuse_kv``: keep the keys and values of the last prompt's prefix, as the server does
        while the user types (``bench`` tasks are separate documents: off there)."""
        self.decoder = Decoder(loaded.model, loaded.tokenizer, stop_ids, reuse_kv=reuse_kv,
                               screen_head=ablation != "noscreen")
        self.drafter = build_drafter(loaded, self.decoder, PromptBuilder(loaded.tokenizer),
                                     DrafterConfig(**ABLATIONS[ablation]),
                                     retrieval=() if ablation == "noretrieval" else retrieval)

    def run(self, prompt: Sequence[int], max_new_tokens: int, rule: StopRule | None,
            language: str = "python") -> MethodRun:
        return _run_decoder(self.decoder, self.drafter, prompt, max_new_tokens, rule, language)


class _KnownOutputDrafter:
    """Implements ``decoding.Drafter`` for ``ceiling``: drafts the known output's next
    tokens as one chain, sized by the verify-cost curve for drafts that are always right."""

    def __init__(self, cost: OnlineCost, max_nodes: int = 64) -> None:
        self.cost = cost
        self.max_nodes = max_nodes
        self.output: list[int] = []
        self._prompt_length = 0

    def begin(self, prompt: Sequence[int], language: str | None = None) -> None:
        self._prompt_length = len(prompt)

    def draft(self, tokens: Sequence[int], cache: Any = None, pending: Sequence[int] = ()) -> DraftTree:
        done = len(tokens) - self._prompt_length
        chain = Draft(tuple(self.output[done : done + self.max_nodes]), 1.0, "known", continuation=1.0)
        tree = build_tree([chain], self.max_nodes)
        return tree.prefix(best_prefix(tree.probabilities, self.cost, self.max_nodes))

    def observe(self, tokens: Sequence[int], tree: DraftTree, verified: Verified, seconds: float) -> None:
        if len(tokens) > self._prompt_length:
            self.cost.observe(len(tree), seconds)

    def finish(self, prompt: Sequence[int], generated: Sequence[int]) -> None:
        pass


class CeilingMethod:
    """``ceiling``: the verifier with perfect drafts; ``reference`` gives ``ar``'s run of
    the current task (ar runs first for every task)."""

    def __init__(self, loaded: LoadedModel, stop_ids: frozenset[int], reference: Callable[[], MethodRun]) -> None:
        self.decoder = Decoder(loaded.model, loaded.tokenizer, stop_ids, reuse_kv=False)
        self.drafter = _KnownOutputDrafter(OnlineCost(verify_cost_model(loaded, self.decoder)))
        self.reference = reference

    def run(self, prompt: Sequence[int], max_new_tokens: int, rule: StopRule | None,
            language: str = "python") -> MethodRun:
        self.drafter.output = self.reference().token_ids
        return _run_decoder(self.decoder, self.drafter, prompt, max_new_tokens, rule, language)
