"""``swiftguard index``: build the repository index of a workspace, or the general corpus index."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def add_index_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("index", help="build the retrieval datastore (repository or general corpus)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--workspace", type=Path, metavar="DIR", help="index this folder's source files")
    target.add_argument("--general", nargs="?", const="python", metavar="CORPUS",
                        help="index a general code corpus: python (the default: this Python's stdlib), javascript "
                             "(Node's global packages), c (system headers), go, rust (toolchain sources)")
    parser.add_argument("--tokenizer", type=Path, metavar="PATH",
                        help="tokenizer folder (default: the default model's converted folder)")
    parser.add_argument("--fresh", action="store_true", help="ignore a saved repository index")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def peak_rss_bytes() -> int:
    """The process' peak resident memory."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def rss_bytes() -> int:
    """The process' resident memory now (Linux; elsewhere its peak)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()
    except OSError:
        return peak_rss_bytes()


def load_tokenizer(path: Path | None) -> Any:
    from transformers import AutoTokenizer

    if path is None:
        from ..engine.default_model import converted_dir

        path = converted_dir()
    return AutoTokenizer.from_pretrained(str(path))


def run_index(args: argparse.Namespace) -> int:
    from .general import CORPORA
    from .service import DatastoreService, hf_encoders, hf_tokenizer_key

    if args.general and args.general not in CORPORA:
        print(f"error: unknown corpus {args.general!r} (one of {', '.join(CORPORA)})", file=sys.stderr)
        return 2

    if args.workspace is not None and not args.workspace.is_dir():
        print(f"error: {args.workspace} is not a folder", file=sys.stderr)
        return 2
    try:
        tokenizer = load_tokenizer(args.tokenizer)
    except (OSError, ValueError) as exc:
        print(f"error: cannot load the tokenizer: {exc} (run `swiftguard model prepare`, or pass --tokenizer)",
              file=sys.stderr)
        return 1
    encode, encode_batch = hf_encoders(tokenizer)
    key = hf_tokenizer_key(tokenizer)
    if args.general:
        return _index_general(DatastoreService(None, encode, key, encode_batch), args.general, args.json)
    service = DatastoreService(args.workspace, encode, key, encode_batch, reuse_saved=not args.fresh)
    started = time.perf_counter()
    service.start()
    service.wait_idle()
    seconds = time.perf_counter() - started
    service.stop()
    stats = service.stats()
    report = {
        "workspace": str(service.workspace.root),
        "files": stats["files"],
        "tokens": stats["tokens"],
        "seconds": round(seconds, 3),
        "index_bytes": stats["index_bytes"],
        "bytes_per_token": round(stats["index_bytes"] / max(stats["tokens"], 1), 1),
        "segments": stats["segments"],
        "rss_bytes": rss_bytes(),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['files']} files, {report['tokens']} tokens in {report['seconds']:.2f}s; index "
              f"{report['index_bytes'] / 1e6:.1f} MB ({report['bytes_per_token']} bytes/token), "
              f"process RSS {report['rss_bytes'] / 1e6:.0f} MB")
    return 0


def _index_general(service: Any, corpus: str, as_json: bool) -> int:
    from tqdm import tqdm

    started = time.perf_counter()
    with tqdm(total=service.general_budget, unit="tok", unit_scale=True, file=sys.stderr,
              desc=f"general {corpus} corpus") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        ok = service.build_general(progress, corpus)
    if not ok:
        print(f"error: the general {corpus} corpus index could not be built (see the log)", file=sys.stderr)
        return 1
    index = service.general_sources[corpus].index
    report = {"tokens": index.tokens, "index_bytes": index.nbytes, "seconds": round(time.perf_counter() - started, 3),
              "rss_bytes": rss_bytes()}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"general {corpus} corpus: {report['tokens']} tokens, index {report['index_bytes'] / 1e6:.1f} MB, "
              f"{report['seconds']:.2f}s")
    return 0
