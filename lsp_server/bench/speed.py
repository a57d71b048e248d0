"""``swiftguard bench``: plain greedy vs prompt lookup vs this engine, on real tasks.

Honest by construction: one run starts from empty caches (nothing persisted is read);
within a run a task only benefits from what earlier tasks of the same run produced, as
in an editor session; methods are interleaved per task so that machine noise hits them
alike; the same prompt, model, dtype and stop rule serve every method; neither the
general datastore nor the draft head may have seen the benchmarked repository.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..datastore.service import DatastoreService, hf_encoders, hf_tokenizer_key
from ..drafthead.head import head_path_for, read_head_info, shard_dir
from ..drafthead.provenance import other_repository, trained_on_workspace
from ..engine.loader import load, resolve_source
from ..engine.prompt import PromptBuilder
from ..engine.stopping import StopRules, baseline_rules
from ..genguard import LoadedGuard, load_guard
from ..genguard.head import HeadError
from ..stop_rule import StopRule
from ..syntax import SyntaxStop
from . import humaneval
from .exactness import CheckedVerifier, install_check
from .methods import ABLATIONS, CeilingMethod, GenerateMethod, MethodRun, SwiftMethod, swift_ablation, uses_model_draft
from .quality import edit_similarity, first_line_exact
from .tasks import Task, humaneval_tasks, workspace_tasks


def refuse_head_trained_on(workspace: Path, model_name: str, names: list[str], heads: Path | None = None) -> None:
    """Stop the run (``SystemExit``) if a method would draft with a head trained on the
    workspace (``drafthead.provenance``); warn if the head does not say what it was trained on."""
    if not any(ABLATIONS.get(ablation, {}).get("use_head", True)
               for ablation in map(swift_ablation, names) if ablation is not None):
        return
    path = head_path_for(model_name, heads)
    if not path.is_file():
        return
    try:
        training = read_head_info(path).training
    except HeadError:
        return  # the engine reports the head as unusable and drafts without it
    overlap = trained_on_workspace(training, workspace)
    if overlap is None:
        print(f"warning: the draft head {path} does not list the repositories it was trained on, so this run "
              f"cannot check that it never saw {workspace.name} (heads trained since December 2026 do)", file=sys.stderr)
    elif overlap:
        raise SystemExit(f"the draft head {path} was trained on {', '.join(sorted(overlap))}, the benchmarked "
                         f"repository: it would draft from memory.  Retrain it without that "
                         f"(swiftguard drafthead build or train --exclude-repo NAME), or bench swift-nohead")


def stop_rule_for(mode: str, task: Task, guard: LoadedGuard | None) -> StopRule | None:
    """The same rule for every method: none, the tree-sitter rule, or GenGuard with it."""
    if mode == "none":
        return None
    language = task.language
    rules: list[StopRule] = [SyntaxStop(language) if language else baseline_rules()]
    if guard is not None:
        rules.insert(0, guard.rule(language))
    rule = StopRules(rules)
    rule.begin(task.prefix, task.suffix)
    return rule


class BenchDatastore:
    """The datastore a bench run drafts from, seen as an editor would see the workspace.

    Repository tasks: the workspace indexed fresh (nothing saved is read), and for each
    task its file with the body removed, as the open (unsaved) editor buffer.  The
    general corpora of the tasks' languages (``datastore.general``) are built or loaded
    from the cache before the first task; one that overlaps the benchmarked repository is
    left out.  So are the model's own generations of the benchmarked repository's functions
    (``datastore.generations``, from the draft head's build), where the build made any.
    """

    def __init__(self, loaded: Any, workspace: Path | None, languages: set[str]) -> None:
        encode, encode_batch = hf_encoders(loaded.tokenizer)
        self.service = DatastoreService(workspace, encode, hf_tokenizer_key(loaded.tokenizer), encode_batch,
                                        use_client_watcher=True, persist=False, reuse_saved=False)
        self.service.start()
        for language in sorted(languages):
            if (corpus := self.service.want_general(language)) is not None:
                self.service.build_general(name=corpus, exclude=workspace)
        self.service.load_generations(shard_dir(loaded.name), other_repository(workspace))
        self.service.wait_idle()
        self.workspace = workspace
        self._open: str | None = None

    def show(self, task: Task, typed: str = "") -> None:
        """Make the task's document (file minus the removed body, with ``typed`` at the cursor)
        what the index holds."""
        if self.workspace is None or not task.path:
            return
        if self._open is not None:
            self.service.close_document(self._open)
        self._open = str(self.workspace / task.path)
        self.service.open_document(self._open, task.prefix + typed + task.suffix)
        if not self.service.wait_idle(120):
            raise RuntimeError("the datastore did not finish indexing the task's document in 120 s")

    def stats(self) -> dict[str, Any]:
        return self.service.stats()


def _methods(names: list[str], loaded: Any, stop_ids: frozenset[int], retrieval: BenchDatastore,
             runs: dict[str, list[MethodRun]]) -> dict[str, Any]:
    """The methods by name, in run order; ``runs`` is where the run records their results."""
    methods: dict[str, Any] = {}
    for name in names:
        if name == "ar":
            methods[name] = GenerateMethod(loaded, stop_ids, None)
        elif name == "pld":
            methods[name] = GenerateMethod(loaded, stop_ids, prompt_lookup=10)
        elif name == "ar-stopstrings":
            methods[name] = GenerateMethod(loaded, stop_ids, None, use_stop_strings=True)
        elif (ablation := swift_ablation(name)) is not None:
            if ablation not in ABLATIONS:
                raise SystemExit(f"unknown method {name!r}; ablations: {', '.join(a for a in ABLATIONS if a)}")
            methods[name] = SwiftMethod(loaded, stop_ids, ablation, [retrieval.service.datastore])
        elif name == "ceiling":
            if "ar" not in methods:
                raise SystemExit("method 'ceiling' drafts ar's output: list ar before it")
            methods[name] = CeilingMethod(loaded, stop_ids, lambda: runs["ar"][-1])
        else:
            raise SystemExit(f"unknown method {name!r} (ar, pld, ar-stopstrings, swift, swift-<ablation>, ceiling)")
    return methods


def divergence(loaded: Any, prompt: list[int], reference: list[int], other: list[int]) -> dict[str, Any] | None:
    """Where ``other`` first leaves the reference output, and how close the call was there.

    The logits come from one plain pass over the prompt and the reference tokens before
    that point (the reference's own numerics): a small gap between the two tokens' logits
    means a near-tie that a multi-token pass in bf16 can flip; a large one would be a bug.
    """
    index = next((i for i, (a, b) in enumerate(zip(reference, other)) if a != b), None)
    if index is None:
        return None
    with torch.inference_mode():
        ids = torch.tensor([prompt + reference[:index]], device=loaded.model.device)
        logits = loaded.model(ids, logits_to_keep=1).logits[0, -1].float()
    top2 = logits.topk(2).values.tolist()
    return {
        "token_index": index,
        "reference_token_logit": round(float(logits[reference[index]]), 4),
        "other_token_logit": round(float(logits[other[index]]), 4),
        "gap": round(float(logits[reference[index]] - logits[other[index]]), 4),
        "top2_gap": round(top2[0] - top2[1], 4),
    }


def _summary(runs: list[MethodRun], reference: list[MethodRun] | None, passed: list[bool] | None,
             bodies: list[str] | None) -> dict[str, Any]:
    """One method's totals; ``bodies``: the removed bodies of repository tasks, to score the completions against."""
    new_tokens = sum(run.new_tokens for run in runs)
    seconds = sum(run.seconds for run in runs)
    passes = sum(run.forward_passes for run in runs)
    # After the first pass: it yields one token, or several when it verified a draft tree too
    # (swift's; ``generate`` records no per-pass counts, so prompt lookup's count as one).
    after_first = [(run, run.new_tokens - (run.accepted_per_pass[0] if run.accepted_per_pass else 1)) for run in runs]
    after_first = [(run, tokens) for run, tokens in after_first if tokens > 0]
    decode_seconds = sum(run.seconds - run.first_token_seconds for run, _ in after_first)
    decode_tokens = sum(tokens for _, tokens in after_first)
    return {
        "new_tokens": new_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(new_tokens / seconds, 3) if seconds else 0.0,
        "forward_passes": passes,
        "mean_accepted_per_pass": round(new_tokens / passes, 3) if passes else 0.0,
        "identical_to_ar": (
            round(sum(a.text == b.text for a, b in zip(runs, reference)) / len(runs), 4) if reference else None
        ),
        "pass_at_1": round(sum(passed) / len(passed), 4) if passed is not None else None,
        **(_quality(runs, bodies) if bodies is not None else {}),
        "first_token_seconds": round(sum(run.first_token_seconds for run in runs), 3),
        "decode_tokens_per_second": round(decode_tokens / decode_seconds, 3) if decode_seconds > 0 else None,
    }


def _bodies(tasks: list[Task]) -> list[str] | None:
    """The removed bodies the completions are scored against; None for HumanEval (pass@1 instead)."""
    return None if any(task.problem is not None for task in tasks) else [task.reference for task in tasks]


def _quality(runs: list[MethodRun], bodies: list[str]) -> dict[str, float]:
    return {
        "edit_similarity": round(statistics.fmean(edit_similarity(r.text, b) for r, b in zip(runs, bodies)), 4),
        "first_line_exact": round(statistics.fmean(first_line_exact(r.text, b) for r, b in zip(runs, bodies)), 4),
    }


def run(args: Any) -> dict[str, Any]:
    names = [name.strip() for name in args.methods.split(",") if name.strip()]
    if args.humaneval:
        tasks = humaneval_tasks(args.tasks, args.seed)
    else:
        tasks = workspace_tasks(Path(args.workspace), args.tasks, args.seed)
    if not tasks:
        raise SystemExit("no tasks found")
    if not args.humaneval:
        _, model_name = resolve_source(args.model, lambda _msg: None)
        refuse_head_trained_on(Path(args.workspace).resolve(), model_name, names)
    loaded = load(args.model, args.device, args.dtype, draft_copy=any(map(uses_model_draft, names)))
    builder = PromptBuilder(loaded.tokenizer)
    if args.suffix_share is not None:
        builder.suffix_share = args.suffix_share
    retrieval = BenchDatastore(loaded, None if args.humaneval else Path(args.workspace).resolve(),
                           {task.language for task in tasks if task.language})
    runs: dict[str, list[MethodRun]] = {name: [] for name in names}
    methods = _methods(names, loaded, builder.stop_ids, retrieval, runs)
    if args.check_exact:
        for method in methods.values():
            if isinstance(method, (SwiftMethod, CeilingMethod)):
                install_check(method.decoder, method.drafter)
    guard = None
    if args.stop == "genguard":
        guard, reason = load_guard(loaded.name, loaded.model.config.hidden_size, loaded.tokenizer)
        if guard is None:
            raise SystemExit(f"--stop genguard: {reason}")
    per_task: list[dict[str, Any]] = []
    from tqdm import tqdm

    prompts: list[list[int]] = []
    for task in tqdm(tasks, desc="bench", file=sys.stderr):
        retrieval.show(task)
        prompt = builder.build(task.prefix, task.suffix, args.context_tokens, fresh=True).ids
        prompts.append(prompt)
        row: dict[str, Any] = {"task_id": task.task_id, "language": task.language}
        for name, method in methods.items():
            result = method.run(prompt, args.max_new_tokens, stop_rule_for(args.stop, task, guard), task.language)
            runs[name].append(result)
            row[name] = {"tokens_per_second": round(result.new_tokens / result.seconds, 3) if result.seconds else 0.0,
                         "new_tokens": result.new_tokens, "passes": result.forward_passes}
            if task.problem is None:  # a repository task
                row[name]["edit_similarity"] = round(edit_similarity(result.text, task.reference), 4)
        per_task.append(row)
    report: dict[str, Any] = {
        "model": loaded.name,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "tasks": len(tasks),
        "stop": args.stop,
        "methods": {},
    }
    reference = runs.get("ar")
    bodies = _bodies(tasks)
    for name in names:
        passed = [humaneval.passes(t.problem, r.text) for t, r in zip(tasks, runs[name])] if args.humaneval else None
        report["methods"][name] = _summary(runs[name], reference, passed, bodies)
    details: dict[str, Any] = {"per_task": per_task, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                               "datastore": retrieval.stats()}
    for name, method in methods.items():
        if isinstance(method, (SwiftMethod, CeilingMethod)):
            accepted = [n for r in runs[name] for n in r.accepted_per_pass]
            details[name] = {"accepted_histogram": dict(sorted(Counter(accepted).items()))}
            if isinstance(method, SwiftMethod):
                details[name]["drafter"] = method.drafter.stats.as_json()
            if isinstance(method.decoder.verify, CheckedVerifier):
                details[name]["exactness"] = method.decoder.verify.report()
            screen = method.decoder.verify.screen
            if screen is not None:  # one per LM head, shared by the methods that use it
                details["lm_head_screen"] = {"rows": screen.rows_picked, "full_products": screen.fallbacks}
    if reference is not None:
        details["divergences"] = {
            name: [dict(task_id=t.task_id, **d) for t, p, a, r in zip(tasks, prompts, reference, runs[name])
                   if (d := divergence(loaded, p, a.token_ids, r.token_ids)) is not None]
            for name in names if name != "ar"
        }
        for name in names:
            ratios = [r.new_tokens / r.seconds / (a.new_tokens / a.seconds) for r, a in zip(runs[name], reference)
                      if r.seconds and a.seconds and a.new_tokens]
            _add_speedups(report["methods"][name], report["methods"]["ar"])
            details.setdefault("median_task_speedup", {})[name] = round(statistics.median(ratios), 3) if ratios else None
    details["per_language"] = _per_language(tasks, runs, reference)
    if "ar-stopstrings" in runs:
        baseline = sum(r.seconds for r in runs["ar-stopstrings"])
        details["time_vs_ar_stopstrings"] = {
            name: round(baseline / total, 3) for name in names if (total := sum(r.seconds for r in runs[name]))
        }
    report["details"] = details
    return report


def _per_language(tasks: list[Task], runs: dict[str, list[MethodRun]],
                  reference: list[MethodRun] | None) -> dict[str, dict[str, Any]]:
    """The method summaries again, for the tasks of each language separately."""
    table: dict[str, dict[str, Any]] = {}
    for language in sorted({task.language for task in tasks}):
        keep = [i for i, task in enumerate(tasks) if task.language == language]
        ref = [reference[i] for i in keep] if reference is not None else None
        bodies = _bodies([tasks[i] for i in keep])
        table[language] = {"tasks": len(keep)}
        for name, method_runs in runs.items():
            summary = _summary([method_runs[i] for i in keep], ref, None, bodies)
            del summary["pass_at_1"]
            table[language][name] = summary
        if "ar" in runs:
            for name in runs:
                _add_speedups(table[language][name], table[language]["ar"])
    return table


def _add_speedups(summary: dict[str, Any], ar: dict[str, Any]) -> None:
    """Speed relative to ``ar``: end to end, and after the first pass (the prefill, which
    every method does alike, left out: what speculation itself changes)."""
    for key, rate in (("speedup_over_ar", "tokens_per_second"), ("decode_speedup_over_ar", "decode_tokens_per_second")):
        summary[key] = round(summary[rate] / ar[rate], 3) if summary.get(rate) and ar.get(rate) else None


def _table(report: dict[str, Any]) -> str:
    head = (f"{'method':<16}{'tokens':>8}{'seconds':>10}{'tok/s':>9}{'passes':>8}{'tok/pass':>10}{'same':>7}{'pass@1':>8}"
            f"{'ES':>7}{'speedup':>9}{'decode':>8}")
    lines = [f"{report['model']} on {report['device']} ({report['dtype']}), {report['tasks']} tasks, stop={report['stop']}", head]
    for name, m in report["methods"].items():
        same = "-" if m["identical_to_ar"] is None else f"{m['identical_to_ar']:.2f}"
        p1 = "-" if m["pass_at_1"] is None else f"{m['pass_at_1']:.2f}"
        es = f"{m['edit_similarity']:.3f}" if "edit_similarity" in m else "-"
        speedup = f"{m['speedup_over_ar']:.2f}x" if m.get("speedup_over_ar") else "-"
        decode = f"{m['decode_speedup_over_ar']:.2f}x" if m.get("decode_speedup_over_ar") else "-"
        lines.append(f"{name:<16}{m['new_tokens']:>8}{m['seconds']:>10.1f}{m['tokens_per_second']:>9.2f}"
                     f"{m['forward_passes']:>8}{m['mean_accepted_per_pass']:>10.2f}{same:>7}{p1:>8}{es:>7}{speedup:>9}{decode:>8}")
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["methods"])
    per_task = report["details"]["per_task"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        left.bar([t + i * width for t in range(len(per_task))], [row[name]["tokens_per_second"] for row in per_task],
                 width, label=name)
    left.set_xlabel("task")
    left.set_ylabel("tokens / second")
    left.set_title("Speed per task")
    left.legend()
    swift = [n for n in names if n.startswith("swift")]
    if swift:
        histogram = report["details"][swift[0]]["accepted_histogram"]
        right.bar([int(k) for k in histogram], list(histogram.values()))
        right.set_xlabel(f"tokens per forward pass ({swift[0]})")
        right.set_ylabel("passes")
        right.set_title("Accepted tokens per pass")
    fig.suptitle(f"{report['model']} on {report['device']} ({report['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(args: Any) -> int:
    report = run(args)
    print(_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot:
        _plot(report, Path(args.plot))
    return 0
