"""``swiftguard replay``: an editor session replayed, the user typing real functions line by line.

``swiftguard bench`` times one cold request per task.  In an editor most requests come
while the user types: the decoder keeps the keys and values of the unchanged prefix
(``engine.kv_reuse``), and the preference cache, the draft head's context and the datastore
carry over from the last request.  This replays that.  For each sampled task (a function
body removed from its file, as ``bench`` samples them), the user types the real body a line
at a time.  A completion is requested at the cursor before the first line and after each
typed line (with the next line's indentation typed), up to ``--lines`` requests per task.
The datastore sees the file as typed so far.

Methods, interleaved per request, each with its own decoder and KV cache, all reusing it:
``plain`` (this engine's decoder without drafts: what speculation off gives) and ``swift``
or ``swift-<ablation>``.  The prompt is built once per request, with the editor's sticky
window, so every method gets the same ids.  Reported per method: total and median seconds
per request, median time to the first token, passes, the share of prompt tokens reused, and
how many outputs equal ``plain``'s.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from ..engine.loader import load, resolve_source
from ..engine.prompt import PromptBuilder
from ..genguard import load_guard
from .methods import ABLATIONS, MethodRun, PlainMethod, SwiftMethod, swift_ablation, uses_model_draft
from .speed import BenchDatastore, divergence, refuse_head_trained_on, stop_rule_for
from .tasks import Task, workspace_tasks


def typed_states(task: Task, lines: int) -> list[str]:
    """The text typed at the cursor before each request: nothing, then the body's first
    line, its first two... each followed by the next line's indentation, as an editor's
    auto-indent leaves it (the task's prefix already holds the first line's)."""
    body = task.reference.splitlines(keepends=True)
    states = []
    for count in range(min(lines, len(body))):
        typed = "".join(body[:count])
        if count:
            following = body[count]
            typed += following[: len(following) - len(following.lstrip(" \t"))]
        states.append(typed)
    return states


def _methods(names: list[str], loaded: Any, stop_ids: frozenset[int], retrieval: BenchDatastore) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    for name in names:
        ablation = swift_ablation(name)
        if name == "plain":
            methods[name] = PlainMethod(loaded, stop_ids, reuse_kv=True)
        elif ablation is not None and ablation in ABLATIONS:
            methods[name] = SwiftMethod(loaded, stop_ids, ablation, [retrieval.service.datastore], reuse_kv=True)
        else:
            raise SystemExit(f"unknown method {name!r} (plain, swift, swift-<ablation>; ablations: "
                             f"{', '.join(a for a in ABLATIONS if a)})")
    return methods


def _summary(runs: list[MethodRun], prompt_tokens: list[int], reference: list[MethodRun] | None) -> dict[str, Any]:
    seconds = [run.seconds for run in runs]
    new_tokens = sum(run.new_tokens for run in runs)
    passes = sum(run.forward_passes for run in runs)
    summary: dict[str, Any] = {
        "requests": len(runs),
        "new_tokens": new_tokens,
        "seconds": round(sum(seconds), 3),
        "median_seconds": round(statistics.median(seconds), 4),
        "p90_seconds": round(statistics.quantiles(seconds, n=10)[-1], 4) if len(seconds) > 1 else round(seconds[0], 4),
        "median_first_token_seconds": round(statistics.median(run.first_token_seconds for run in runs), 4),
        "forward_passes": passes,
        "mean_accepted_per_pass": round(new_tokens / passes, 3) if passes else 0.0,
        "reused_prompt_share": round(sum(run.reused_prompt_tokens for run in runs) / max(1, sum(prompt_tokens)), 4),
        "identical_to_plain": None,
        "speedup_over_plain": None,
        "median_speedup_over_plain": None,
    }
    if reference is not None:
        same = sum(a.token_ids == b.token_ids for a, b in zip(runs, reference))
        summary["identical_to_plain"] = round(same / len(runs), 4)
        total = sum(seconds)
        summary["speedup_over_plain"] = round(sum(run.seconds for run in reference) / total, 3) if total else None
        ratios = [b.seconds / a.seconds for a, b in zip(runs, reference) if a.seconds]
        summary["median_speedup_over_plain"] = round(statistics.median(ratios), 3) if ratios else None
    return summary


def run(args: Any) -> dict[str, Any]:
    names = [name.strip() for name in args.methods.split(",") if name.strip()]
    workspace = Path(args.workspace).resolve()
    tasks = workspace_tasks(workspace, args.tasks, args.seed)
    if not tasks:
        raise SystemExit("no tasks found")
    _, model_name = resolve_source(args.model, lambda _msg: None)
    refuse_head_trained_on(workspace, model_name, names)
    loaded = load(args.model, args.device, args.dtype, draft_copy=any(map(uses_model_draft, names)))
    builder = PromptBuilder(loaded.tokenizer)
    if args.suffix_share is not None:
        builder.suffix_share = args.suffix_share
    retrieval = BenchDatastore(loaded, workspace, {task.language for task in tasks if task.language})
    methods = _methods(names, loaded, builder.stop_ids, retrieval)
    guard = None
    if args.stop == "genguard":
        guard, reason = load_guard(loaded.name, loaded.model.config.hidden_size, loaded.tokenizer)
        if guard is None:
            raise SystemExit(f"--stop genguard: {reason}")
    runs: dict[str, list[MethodRun]] = {name: [] for name in names}
    prompts: list[list[int]] = []
    per_request: list[dict[str, Any]] = []
    from tqdm import tqdm

    for task in tqdm(tasks, desc="replay", file=sys.stderr):
        for line, typed in enumerate(typed_states(task, args.lines)):
            retrieval.show(task, typed)
            at_cursor = dataclasses.replace(task, prefix=task.prefix + typed)
            # A new document at its first request; then the window sticks as in the editor.
            prompt = builder.build(at_cursor.prefix, task.suffix, args.context_tokens, fresh=not line).ids
            prompts.append(prompt)
            row: dict[str, Any] = {"task_id": task.task_id, "line": line, "prompt_tokens": len(prompt)}
            for name, method in methods.items():
                rule = stop_rule_for(args.stop, at_cursor, guard)
                result = method.run(prompt, args.max_new_tokens, rule, task.language)
                runs[name].append(result)
                row[name] = {"seconds": round(result.seconds, 4), "new_tokens": result.new_tokens,
                             "passes": result.forward_passes, "reused": result.reused_prompt_tokens}
            per_request.append(row)
    reference = runs.get("plain")
    report: dict[str, Any] = {
        "model": loaded.name,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "tasks": len(tasks),
        "requests": len(per_request),
        "stop": args.stop,
        "methods": {name: _summary(runs[name], [len(prompt) for prompt in prompts],
                                   reference if name != "plain" else None) for name in names},
    }
    details: dict[str, Any] = {"per_request": per_request, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                               "lines": args.lines}
    for name, method in methods.items():
        if isinstance(method, SwiftMethod):
            details[name] = {"drafter": method.drafter.stats.as_json()}
    if reference is not None:  # in bf16 a multi-token pass can flip a near-tie: each one, with its logit gap
        details["divergences"] = {
            name: [dict(task_id=row["task_id"], line=row["line"], **found)
                   for row, prompt, plain, other in zip(per_request, prompts, reference, runs[name])
                   if (found := divergence(loaded, prompt, plain.token_ids, other.token_ids)) is not None]
            for name in names if name != "plain"
        }
    report["details"] = details
    return report


def _table(report: dict[str, Any]) -> str:
    lines = [f"{report['model']} on {report['device']} ({report['dtype']}), {report['tasks']} tasks, "
             f"{report['requests']} requests, stop={report['stop']}",
             f"{'method':<16}{'tokens':>8}{'seconds':>10}{'median':>9}{'p90':>8}{'ttft':>8}{'passes':>8}"
             f"{'reused':>8}{'same':>7}{'speedup':>9}{'median':>8}"]
    for name, m in report["methods"].items():
        same = "-" if m["identical_to_plain"] is None else f"{m['identical_to_plain']:.2f}"
        speedup = "-" if m["speedup_over_plain"] is None else f"{m['speedup_over_plain']:.2f}x"
        median = "-" if m["median_speedup_over_plain"] is None else f"{m['median_speedup_over_plain']:.2f}x"
        lines.append(f"{name:<16}{m['new_tokens']:>8}{m['seconds']:>10.1f}{m['median_seconds']:>9.3f}"
                     f"{m['p90_seconds']:>8.3f}{m['median_first_token_seconds']:>8.3f}{m['forward_passes']:>8}"
                     f"{m['reused_prompt_share']:>8.2f}{same:>7}{speedup:>9}{median:>8}")
    return "\n".join(lines)


def main(args: Any) -> int:
    report = run(args)
    print(_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
