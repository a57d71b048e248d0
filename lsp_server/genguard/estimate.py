"""A quick HumanEval estimate of what a stop rule saves, from ONE greedy run per problem.

Stop rules are causal (a decision at token i depends on tokens <= i only) and greedy
decoding is deterministic, so the output under any rule is a prefix of the output with
no rule.  Each problem is therefore decoded once to the token budget (recording the
hidden states the decoder hands every rule), and every rule is replayed over that run:
tokens generated = tokens up to the rule's decision, completion = its cut.  pass@1 uses
the benchmark's own executor (``bench.humaneval.passes``, which applies the usual
HumanEval post-processing cut to every rule alike).  HumanEval is only evaluated here,
never trained on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..syntax.stop import SyntaxStop


class _Replayer:
    """Feeds a recorded run to a rule one token at a time; returns (tokens used, kept text)."""

    def __init__(self, tokenizer: Any, ids: list[int], hidden: np.ndarray) -> None:
        self.tokenizer = tokenizer
        self.ids = ids
        self.hidden = hidden

    def run(self, rule: Any, prefix: str) -> tuple[int, str]:
        import torch

        full = self.tokenizer.decode(self.ids)
        if rule is None:
            return len(self.ids), full
        rule.begin(prefix, "")
        for index in range(len(self.ids)):
            text = self.tokenizer.decode(self.ids[: index + 1])
            decision = rule.step(text, self.ids[index : index + 1], torch.from_numpy(self.hidden[index : index + 1]))
            if decision is not None:
                return index + 1, text[: decision.keep_chars]
        return len(self.ids), full


def _recorded_runs(loaded: Any, tasks: list[Any], max_new_tokens: int, cache: Path | None,
                   progress: Callable[[str], None]) -> list[tuple[list[int], np.ndarray]]:
    """(token ids, hidden states) of the greedy run of every task, from ``cache`` when it matches."""
    from ..engine.decoding import Decoder
    from ..engine.prompt import PromptBuilder
    from .data import _Recorder

    key = f"{loaded.name}|{max_new_tokens}|" + ",".join(t.task_id for t in tasks)
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as data:
            if str(data["key"]) == key:
                bounds = data["bounds"]
                return [(data["ids"][a:b].tolist(), data["hidden"][a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    prompts = PromptBuilder(loaded.tokenizer)
    decoder = Decoder(loaded.model, loaded.tokenizer, prompts.stop_ids, reuse_kv=False)
    runs = []
    started = time.perf_counter()
    for number, task in enumerate(tasks, 1):
        prompt = prompts.build(task.prefix, task.suffix, 2048, fresh=True).ids
        recorder = _Recorder()
        out = decoder.generate(prompt, max_new_tokens, stop_rule=recorder)
        hidden = np.concatenate(recorder.hidden)[: len(out.token_ids)] if recorder.hidden else \
            np.zeros((0, int(loaded.model.config.hidden_size)), dtype=np.float16)
        runs.append((out.token_ids, hidden))
        progress(f"generated {number}/{len(tasks)}, {time.perf_counter() - started:.0f}s")
    if cache is not None:
        bounds = np.cumsum([0] + [len(ids) for ids, _ in runs])
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, key=np.array(key), bounds=bounds, ids=np.array([t for ids, _ in runs for t in ids], dtype=np.int64),
                 hidden=np.concatenate([h for _, h in runs]))
    return runs


def humaneval_estimate(loaded: Any, rules: dict[str, Callable[[], Any]], count: int, max_new_tokens: int = 128,
                       seed: int = 0, progress: Callable[[str], None] = lambda _m: None,
                       cache: Path | None = None) -> dict[str, Any]:
    """Tokens and pass@1 per rule (``rules`` maps a name to a factory; None-returning = no rule).

    ``cache`` keeps the recorded greedy runs (an ``.npz``) so that other heads or
    thresholds can be replayed without decoding again.
    """
    from ..bench import humaneval
    from ..bench.tasks import humaneval_tasks

    tasks = humaneval_tasks(count, seed)
    started = time.perf_counter()
    runs = _recorded_runs(loaded, tasks, max_new_tokens, cache, progress)
    totals = {name: {"tokens": 0, "passed": 0} for name in rules}
    for task, (ids, hidden) in zip(tasks, runs):
        replayer = _Replayer(loaded.tokenizer, ids, hidden)
        for name, factory in rules.items():
            tokens, text = replayer.run(factory(), task.prefix)
            totals[name]["tokens"] += tokens
            totals[name]["passed"] += int(humaneval.passes(task.problem, text))
    baseline = totals.get("none", {}).get("tokens") or 1
    return {
        "problems": len(tasks),
        "max_new_tokens": max_new_tokens,
        "rules": {name: {"tokens": t["tokens"], "pass_at_1": round(t["passed"] / max(1, len(tasks)), 4),
                         "tokens_vs_none": round(t["tokens"] / baseline, 4)} for name, t in totals.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def default_rules(loaded: Any, genguard: Callable[[], Any] | None) -> dict[str, Callable[[], Any]]:
    """none, the engine's baseline rules, SyntaxStop, GenGuard, and GenGuard + SyntaxStop."""
    from ..engine.stopping import StopRules, baseline_rules

    rules: dict[str, Callable[[], Any]] = {
        "none": lambda: None,
        "baseline": baseline_rules,
        "syntax": lambda: SyntaxStop("python"),
    }
    if genguard is not None:
        rules["genguard"] = genguard
        rules["genguard+syntax"] = lambda: StopRules([genguard(), SyntaxStop("python")])
    return rules
