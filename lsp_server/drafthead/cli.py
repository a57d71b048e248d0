"""``swiftguard drafthead build-data | train``: states of real code, and the draft head fitted on them
(``train`` also takes GenGuard's shards: any stored state and token is a training pair)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from . import DRAFT_LEVELS, TRAIN_LR
from .build import CONTINUE_LR


def add_drafthead_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``drafthead`` subcommand on the main parser's subparsers."""
    parser = subparsers.add_parser("drafthead", help="build data for and train the learned draft head")
    parser.add_argument("action", choices=("build", "build-data", "train"),
                        help="build: the whole recipe on this machine's code in one time budget; "
                             "build-data / train: its steps by hand")
    parser.add_argument("--minutes", type=float, default=45.0,
                        help="build: time budget, training included: about half of it makes data, training "
                             "has the rest and stops when it ends (later builds train on all their shards, so "
                             "a longer budget lets them finish their epochs)")
    parser.add_argument("--shards", type=Path, help="build: folder that keeps the shards between builds "
                                                    "(default: in the cache dir, per model)")
    parser.add_argument("--data", type=Path, action="append", help="train: shard file or folder of shards "
                        "(`drafthead build-data` or `genguard build-data` output)")
    parser.add_argument("--out", type=Path, help="build-data: the shard to write; train: head .safetensors to write "
                                                 "(default: the cache dir, where the engine looks for the model's head)")
    parser.add_argument("--source", action="append", default=[], metavar="LANG=PATH[@DEPTH]",
                        help="build-data: code to read (repeatable; default: the Python standard library; "
                             "build: the standard library and the installed packages)")
    parser.add_argument("--tokens", type=int, default=400_000, help="build-data: positions to store")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="build-data: store what is done by then; train: finish by then, the evaluation of "
                             "the held-out parts after the last step included (the learning rate comes down "
                             "over the training's share)")
    parser.add_argument("--window", type=int, default=512, help="build-data: tokens per forward pass")
    parser.add_argument("--per-file", type=int, default=2, help="build-data: windows per file")
    parser.add_argument("--per-repo", type=int, default=20_000, help="build-data: tokens per repository")
    parser.add_argument("--model", default=None, help="the shards' model: folder, .gguf or hub id (default: embedded)")
    parser.add_argument("--device", default="cpu", help="build-data: where the model runs (training runs on the CPU)")
    parser.add_argument("--dtype", default="bfloat16", help="build-data: the model's dtype")
    parser.add_argument("--vocab", type=int, default=16384, help="how many of the most frequent tokens it can propose")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--context", type=int, default=128,
                        help="train: earlier positions the head attends to (0: none, an MLP on the last state)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 6; build: 3, or 2 where it continues a head, "
                        "as far as its budget allows)")
    parser.add_argument("--train-dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                        help="train: the dtype of the training products, weights stay float32 (auto: bfloat16 "
                             "where the CPU runs it natively)")
    parser.add_argument("--repeat", action="append", default=[], metavar="KIND=N",
                        help="train: see the pairs of a kind of sample (file, teacher, generated) N times per epoch")
    parser.add_argument("--depth", type=int, default=DRAFT_LEVELS,
                        help="steps the head is unrolled in training (tokens ahead, as many as the engine drafts)")
    parser.add_argument("--holdout-fraction", type=float, default=0.15, help="share of repositories held out")
    parser.add_argument("--exclude-repo", action="append", default=[], metavar="NAME",
                        help="train, build: leave this repository's samples out (repeatable; any version or "
                             "case), e.g. one you will benchmark: `bench --workspace` refuses a head trained on it")
    parser.add_argument("--init", type=Path, metavar="HEAD",
                        help="train: continue from this trained head (its vocabulary, width and context; its "
                             "repositories stay in the new head's list), e.g. to add new data at a lower --lr; "
                             "where the result guesses worse on held-out generations, this head is kept")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"train: the one-cycle schedule's peak learning rate (default: {TRAIN_LR}; build: "
                             f"{CONTINUE_LR} where it continues a head)")
    parser.add_argument("--fresh", action="store_true",
                        help="build: train a new head even where one it could continue exists")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, help="write the report as JSON here")
    return parser


def run_drafthead(args: argparse.Namespace) -> int:
    """``build``, ``build-data`` or ``train``; returns the exit status."""
    if args.action == "build":
        from .build import build_head

        return build_head(args)
    if args.action == "build-data":
        return _build_data(args)
    if not args.data:
        print("error: train needs --data SHARDS", file=sys.stderr)
        return 2
    return _train(args)


def _build_data(args: argparse.Namespace) -> int:
    """Store the states of windows of the sources' files as one shard."""
    from ..engine.decoding import Decoder
    from ..genguard.cli import open_build
    from ..genguard.data import ShardWriter, humaneval_signatures
    from ..genguard.head import tokenizer_hash
    from .corpus import build_windows, iter_windows

    opened = open_build(args)
    if isinstance(opened, int):
        return opened
    sources, loaded = opened
    decoder = Decoder(loaded.model, loaded.tokenizer, frozenset(), reuse_kv=False)
    writer = ShardWriter(meta={
        "base_model": loaded.name, "hidden_size": int(loaded.model.config.hidden_size),
        "tokenizer_hash": tokenizer_hash(loaded.tokenizer), "sources": [f"{s.language}={s.root}" for s in sources],
        "kinds": ["file"], "window": args.window})
    exclude = humaneval_signatures()
    stored = 0
    end = None if args.time_budget is None else time.perf_counter() + args.time_budget
    for number, source in enumerate(sources):
        share = (args.tokens - stored) // (len(sources) - number)  # what one source leaves unused, the next may take
        deadline = None if end is None else \
            time.perf_counter() + (end - time.perf_counter()) / (len(sources) - number)  # the time left, shared alike
        windows = iter_windows(source, loaded.tokenizer, args.window, args.per_file, args.per_repo, args.seed, exclude)
        got = build_windows(decoder, windows, writer, share, deadline,
                            lambda msg: print(f"  {source.language}={source.root}: {msg}", file=sys.stderr, flush=True))
        print(f"{source.language}={source.root}: {got} positions", file=sys.stderr)
        stored += got
    if not writer.samples:
        print("error: the sources hold no readable code", file=sys.stderr)
        return 1
    writer.write(args.out)
    print(json.dumps(writer.summary()["tokens"]))
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train, evaluate on held-out repositories against a bigram table, save; returns the exit status."""
    import numpy as np
    import torch

    from ..engine.device import resolve_dtype
    from ..engine.loader import load
    from ..genguard.head import model_key, tokenizer_hash
    from ..genguard.train import emit_report, load_shards, split
    from .head import DraftHead, DraftHeadInfo, HeadError, head_path_for, load_draft_head, save_draft_head
    from .provenance import repository_name, repository_names
    from .train import (Pairs, accuracy, bigram_accuracy, closing_evaluation_seconds, head_accuracy, heldout_parts,
                        judged_part, mean_top1, model_picks, pair_copies, pairs, timed_probe, train_draft_head)

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    epochs = args.epochs or 6
    data = load_shards(args.data)
    loaded = load(args.model, "cpu", "bfloat16")
    key = tokenizer_hash(loaded.tokenizer)
    shard_models = {str(meta.get("base_model")) for meta in data.meta}
    if {model_key(name) for name in shard_models} != {model_key(loaded.name)} or \
            {meta.get("tokenizer_hash") for meta in data.meta} != {key}:
        print(f"error: the shards were built with {sorted(shard_models)}, not the loaded {loaded.name}", file=sys.stderr)
        return 2
    masks = split(data, set(), args.holdout_fraction, 0.0)
    repos = np.array([repository_name(str(repo)) for repo in data.repo])
    excluded = np.isin(repos, sorted(repository_names(args.exclude_repo)))
    if args.exclude_repo:
        print(f"--exclude-repo: {int(excluded.sum())} samples left out", file=sys.stderr)
    masks = {name: mask & ~excluded for name, mask in masks.items()}
    labels = model_picks(data, loaded.model.get_output_embeddings())
    print(f"labels: the model's own pick differs from the stored next token at "
          f"{float((labels != data.token_ids).mean()):.1%} of positions", file=sys.stderr)
    train = pairs(data, masks["train"], labels, args.depth)
    try:  # a typo is refused here, before any training
        pair_copies(data.kind[data.sample_index[train.rows]], args.repeat)
    except ValueError as exc:
        print(f"error: --repeat {exc}", file=sys.stderr)
        return 2
    tests = heldout_parts(data, pairs(data, masks["heldout_repos"], labels, args.depth))

    last: dict[str, list[tuple[float, float]]] = {}
    """The latest evaluation, after the last epoch the trained head's: the report reuses it."""

    def evaluate(head, batches) -> str:  # type: ignore[no-untyped-def]
        last.update({name: accuracy(head, batches, data, part, args.context) for name, part in tests.items()})
        return " ".join(f"{name} top1/top4 {result}" for name, result in last.items())

    init = None
    if args.init is not None:
        try:
            init, init_info = load_draft_head(args.init, int(data.features.shape[1]), key)
        except HeadError as exc:
            print(f"error: --init: {exc}", file=sys.stderr)
            return 2
        if init_info.training.get("holdout_fraction", args.holdout_fraction) != args.holdout_fraction:
            print(f"error: --init {args.init} held out {init_info.training['holdout_fraction']} of the repositories, "
                  f"not {args.holdout_fraction}: it trained on some repositories held out here", file=sys.stderr)
            return 2
        args.width, args.context = init_info.width, init_info.context

    embed = loaded.model.get_input_embeddings().weight.detach()
    lm_head = loaded.model.get_output_embeddings()
    baseline = None
    """The held-out part a continued head is judged on and the accuracy there of the head it
    starts from, measured before training so that the time budget covers it."""
    timed: tuple[float, Pairs] | None = None
    """One evaluation before training and what it read: the closing evaluation's time follows."""
    if init is not None and (judged := judged_part(tests)) is not None:
        before, seconds = head_accuracy(init, data, labels, embed, lm_head, tests[judged])
        baseline, timed = (judged, before), (seconds, tests[judged])
        print(f"the head continued from: {judged} top1/top4 {baseline[1]}", file=sys.stderr)
    compute_dtype = resolve_dtype(args.train_dtype, torch.device("cpu"))
    try:
        budget = None
        if args.time_budget is not None:  # the evaluation after the last step is part of the budget
            if timed is None and any(len(part.rows) for part in tests.values()):
                shape = DraftHead(int(data.features.shape[1]), args.width, torch.arange(args.vocab), args.context)
                timed = timed_probe(data, labels, embed, lm_head, tests, shape)  # a new head: none was timed
            closing = 0.0 if timed is None else closing_evaluation_seconds(data, tests, *timed)
            budget = args.time_budget - (time.perf_counter() - started) - closing
            print(f"time budget: {budget:.0f}s for training, about {closing:.0f}s kept for the closing evaluation",
                  file=sys.stderr)
        head, batches, steps, planned = train_draft_head(
            data, train, labels, embed, lm_head, args.vocab, args.width, epochs,
            args.seed, lr=args.lr or TRAIN_LR, evaluate=evaluate, progress=lambda msg: print(msg, file=sys.stderr, flush=True),
            compute_dtype=compute_dtype, repeat=args.repeat, context=args.context, init=init, time_budget=budget)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    heldout = {name: [{"step": step + 1, "top1": top1, "top4": top4}
                      for step, (top1, top4) in enumerate(last[name])]
               for name in tests}
    bigram = {name: dict(zip(("top1", "top4"), (round(x, 3) for x in bigram_accuracy(data, train, part))))
              for name, part in tests.items()}
    coverage = {name: round(float(np.isin(part.next_tokens, head.vocab.numpy()).mean()), 3) for name, part in tests.items()}
    training = {"pairs": len(train.rows), "heldout_pairs": {n: len(p.rows) for n, p in tests.items()},
                "vocab": int(head.vocab.numel()), "epochs": epochs, "steps": steps, "planned_steps": planned,
                "depth": args.depth, "context": args.context,
                "repeat": sorted(args.repeat),
                "train_dtype": str(compute_dtype).removeprefix("torch."), "holdout_fraction": args.holdout_fraction,
                "heldout": heldout, "bigram_baseline": bigram, "vocab_coverage": coverage,
                "lr": args.lr or TRAIN_LR,
                "sources": sorted({s for m in data.meta for s in m.get("sources", [])}),
                "repos": sorted(set(repos[masks["train"]].tolist())),
                "excluded_repos": sorted(repository_names(args.exclude_repo))}
    if init is not None:  # what the head learned before stays part of what it learned from
        training["init"] = {"head": str(args.init), "epochs": init_info.training.get("epochs"),
                            "pairs": init_info.training.get("pairs")}
        training["sources"] = sorted(set(training["sources"]) | set(init_info.training.get("sources", [])))
        training["repos"] = sorted(set(training["repos"]) | set(init_info.training.get("repos", [])))
        training["excluded_repos"] = sorted(set(training["excluded_repos"])
                                            & set(init_info.training.get("excluded_repos", [])))
    out = args.out or head_path_for(loaded.name)
    kept = False
    if baseline is not None:
        judged, before = baseline
        kept = mean_top1(last[judged]) < mean_top1(before)
        training["continued"] = {"judged_on": judged, "before": before, "after": last[judged],
                                 "kept": "earlier head" if kept else "continued head"}
        if kept:
            print(f"the continued head guessed worse on held-out {judged} than the head it started from "
                  f"(mean first guesses {mean_top1(last[judged]):.3f} against {mean_top1(before):.3f}): "
                  f"{args.init} is kept", file=sys.stderr)
    if kept:  # running the build again never leaves a worse head behind
        if out.resolve() != args.init.resolve():
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.init, out)
    else:
        info = DraftHeadInfo(loaded.name, int(data.features.shape[1]), key, args.width, args.context, training)
        save_draft_head(out, head, info)
    return emit_report({"head": str(out), **training, "seconds": round(time.perf_counter() - started, 1)},
                       args.report)
