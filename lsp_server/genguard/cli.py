"""``swiftguard genguard build-data | train | eval``: build GenGuard's data, train a head, evaluate it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_genguard_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``genguard`` subcommand on the main parser's subparsers."""
    parser = subparsers.add_parser("genguard", help="build data for, train and evaluate the GenGuard stop head")
    parser.add_argument("action", choices=("build-data", "train", "eval"))
    parser.add_argument("--model", default=None, help="model folder, .gguf or hub id (default: embedded)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (keep the machine usable)")
    parser.add_argument("--seed", type=int, default=0)
    data = parser.add_argument_group("build-data")
    data.add_argument("--source", action="append", default=[], metavar="LANG=PATH[@DEPTH]",
                      help="code to take functions from; python defaults to this Python's standard library")
    data.add_argument("--kinds", default="teacher,generated", help="teacher and/or generated")
    data.add_argument("--sites", type=int, default=200, help="functions per source")
    data.add_argument("--per-file", type=int, default=3)
    data.add_argument("--per-repo", type=int, default=None, help="at most this many functions per repository")
    data.add_argument("--skip-seen", type=Path, action="append", default=[], metavar="SHARD",
                      help="shard file or folder: leave out functions it already has samples of")
    data.add_argument("--standalone", action="store_true",
                      help="prompt with the function's header alone (HumanEval-style), not the file up to it")
    data.add_argument("--with-suffix", action="store_true",
                      help="the rest of the file after the function in the prompt, as in an editor's request")
    data.add_argument("--context-tokens", type=int, default=512)
    data.add_argument("--new-tokens", type=int, default=128, help="generation length of generated samples")
    data.add_argument("--batch", type=int, default=64,
                      help="generated samples decoded side by side (one step costs about what one sequence's does)")
    data.add_argument("--after-tokens", type=int, default=96, help="teacher tokens kept after the function's end")
    data.add_argument("--time-budget", type=float, default=None, help="seconds; write what is done by then")
    data.add_argument("--out", type=Path, help="build-data: shard .npz to write; train: head .safetensors")
    train = parser.add_argument_group("train / eval")
    train.add_argument("--data", type=Path, action="append", default=[], help="shard file or folder of shards")
    train.add_argument("--holdout-language", action="append", default=[], help="languages kept out of training")
    train.add_argument("--holdout-fraction", type=float, default=0.2, help="share of repositories held out")
    train.add_argument("--tune-fraction", type=float, default=0.15,
                       help="share of repositories (not trained on) that tune the threshold")
    train.add_argument("--train-kinds", default="teacher,generated")
    train.add_argument("--compare-mixes", action="store_true", help="train teacher, generated and both; report all")
    train.add_argument("--width", type=int, default=0, help="hidden layer width (0: CodeFast's single linear layer)")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--threshold", type=float, default=None, help="fixed stop threshold (default: tuned on train)")
    train.add_argument("--max-early", type=float, default=0.01,
                       help="threshold tuning: largest share of tuning samples the rule may cut inside the function")
    train.add_argument("--min-new-tokens", type=int, default=10)
    train.add_argument("--head", type=Path, help="eval: the head to evaluate (default: --out)")
    train.add_argument("--report", type=Path, help="write the report as JSON here")
    train.add_argument("--humaneval", type=int, default=0, metavar="N",
                       help="eval: also estimate tokens and pass@1 on N HumanEval problems (one greedy run each)")
    train.add_argument("--max-new-tokens", type=int, default=128, help="eval --humaneval: token budget")
    train.add_argument("--runs-cache", type=Path, help="eval --humaneval: keep/reuse the recorded greedy runs here")
    return parser


def open_build(args: argparse.Namespace) -> tuple[list[Any], Any] | int:
    """What a ``build-data`` command starts with: ``--out`` checked, threads set, the sources
    parsed (this Python's standard library by default) and the model loaded.  Returns the
    sources and the loaded model, or the exit status of a refusal (said on stderr)."""
    import torch

    from ..datastore.general import stdlib_root
    from ..engine import ModelLoadError, load
    from .data import Source

    if args.out is None:
        print("error: build-data needs --out SHARD.npz", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        sources = [Source.parse(spec) for spec in args.source] or [Source("python", stdlib_root())]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return sources, load(args.model, args.device, args.dtype)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _build_data(args: argparse.Namespace) -> int:
    from .data import SampleBuilder, ShardWriter, build, collect_sites, humaneval_signatures, shard_functions
    from .head import tokenizer_hash

    kinds = [kind for kind in args.kinds.split(",") if kind]
    if not set(kinds) <= {"teacher", "generated"}:
        print(f"error: unknown kinds {args.kinds!r}", file=sys.stderr)
        return 2
    if args.batch < 1:
        print("error: --batch must be at least 1", file=sys.stderr)
        return 2
    if args.with_suffix and args.standalone:
        print("error: --with-suffix prompts with the file around the function, --standalone with its header alone",
              file=sys.stderr)
        return 2
    try:
        seen = shard_functions(args.skip_seen)
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: --skip-seen: {exc}", file=sys.stderr)
        return 2
    if args.skip_seen:
        print(f"leaving out {len(seen)} functions already in {', '.join(map(str, args.skip_seen))}", file=sys.stderr)
    opened = open_build(args)
    if isinstance(opened, int):
        return opened
    sources, loaded = opened
    exclude = humaneval_signatures()
    builder = SampleBuilder(loaded, args.context_tokens, args.after_tokens, new_tokens=args.new_tokens,
                            standalone=args.standalone, batch=args.batch, with_suffix=args.with_suffix)
    hidden_size = int(loaded.model.config.hidden_size)
    writer = ShardWriter(meta={
        "base_model": loaded.name, "hidden_size": hidden_size, "tokenizer_hash": tokenizer_hash(loaded.tokenizer),
        "sources": [f"{s.language}={s.root}" for s in sources], "kinds": kinds, "context_tokens": args.context_tokens,
        "new_tokens": args.new_tokens, "after_tokens": args.after_tokens, "standalone": args.standalone,
        "with_suffix": args.with_suffix, "batch": args.batch, "skip_seen": [str(path) for path in args.skip_seen],
    })
    excluded_total = 0
    started = time.perf_counter()
    for number, source in enumerate(sources):
        sites, excluded = collect_sites(source, args.sites, args.seed, args.per_file, exclude=exclude,
                                      per_repo=args.per_repo, skip=seen)
        excluded_total += excluded
        print(f"{source.language}: {len(sites)} functions from {source.root} ({excluded} HumanEval look-alikes left out)",
              file=sys.stderr)
        # Each source gets an equal share of the time left: what one that runs out of functions leaves, the next uses.
        budget = None if args.time_budget is None else \
            (args.time_budget - (time.perf_counter() - started)) / (len(sources) - number)
        build(builder, sites, kinds, writer, budget, lambda msg: print(f"  {source.language}: {msg}", file=sys.stderr))
    writer.meta["humaneval_excluded"] = excluded_total
    if not writer.samples:
        print("error: no samples were built", file=sys.stderr)
        return 1
    writer.write(args.out)
    print(json.dumps(writer.summary(), indent=2))
    return 0


def _humaneval(args: argparse.Namespace) -> int:
    import torch

    from ..engine import ModelLoadError, load
    from . import LoadedGuard, load_head, tokenizer_hash
    from .estimate import default_rules, humaneval_estimate
    from .train import emit_report

    torch.set_num_threads(args.threads)
    try:
        loaded = load(args.model, args.device, args.dtype)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    head_path = args.head or args.out
    genguard = None
    if head_path is not None:
        head, info = load_head(head_path, int(loaded.model.config.hidden_size), tokenizer_hash(loaded.tokenizer))
        guard = LoadedGuard(head, info, loaded.tokenizer)  # per-language thresholds apply as in the engine
        genguard = lambda: guard.rule("python", args.threshold, args.min_new_tokens)
    report = humaneval_estimate(loaded, default_rules(loaded, genguard), args.humaneval, args.max_new_tokens,
                                args.seed, lambda msg: print(msg, file=sys.stderr), args.runs_cache)
    return emit_report(report, args.report)


def run_genguard(args: argparse.Namespace) -> int:
    """Entry point for ``swiftguard genguard``; returns the exit status."""
    if args.action == "build-data":
        return _build_data(args)
    if args.action == "eval" and args.humaneval:
        return _humaneval(args)
    from .train import run_eval, run_train

    return run_train(args) if args.action == "train" else run_eval(args)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m lsp_server.genguard.cli``) until the main CLI wires it in."""
    parser = argparse.ArgumentParser(prog="swiftguard")
    add_genguard_parser(parser.add_subparsers(dest="command", required=True))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    return run_genguard(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
