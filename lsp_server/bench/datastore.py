"""``python -m lsp_server.bench.datastore``: the retrieval datastore's numbers on this machine.

Corpus: this Python's standard library (real code, present everywhere), tokenized with the
default model's tokenizer (or ``--tokenizer``).  A repository of about ``--lines`` lines is
copied from it into a temporary folder and indexed through the service, as the server
would; the general corpus is built from other stdlib files, and queries come from files in
neither.  Reported: the initial index (seconds, bytes per token, process RSS), retrieval
per decoding step (p50/p95), the update after a one-line edit in a 1,000-line file
(p50/p95; the merging that follows runs later on the indexer's thread and is reported
apart) and prompt lookup over a 2,000-token context.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..datastore import ContextSource, general
from ..datastore.cli import load_tokenizer, rss_bytes
from ..datastore.repository import FileContent
from ..datastore.service import DatastoreService, hf_encoders, hf_tokenizer_key


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p95_ms": round(float(np.percentile(ms, 95)), 4),
            "max_ms": round(float(ms.max()), 4), "n": len(seconds)}


def _split_corpus(lines: int) -> tuple[list[Path], list[Path], list[Path]]:
    """Stdlib files for the repository (~``lines`` lines), the general corpus and the queries."""
    root = general.stdlib_root()
    files = general.corpus_files(root)
    repository, rest, total = [], [], 0
    for path in files:
        try:
            count = path.read_text(encoding="utf-8").count("\n")
        except (OSError, UnicodeDecodeError):
            continue
        if total < lines and count <= 5000:
            repository.append(path)
            total += count
        else:
            rest.append(path)
    return repository, rest[: len(rest) // 2], rest[len(rest) // 2 :]


def _timed(repeat: int, step: Callable[[int], Any]) -> list[float]:
    seconds = []
    for i in range(repeat):
        started = time.perf_counter()
        step(i)
        seconds.append(time.perf_counter() - started)
    return seconds


def run(tokenizer_path: Path | None, lines: int, queries: int, edits: int, seed: int) -> dict[str, Any]:
    tokenizer = load_tokenizer(tokenizer_path)
    encode, encode_batch = hf_encoders(tokenizer)
    key = hf_tokenizer_key(tokenizer)
    rng = random.Random(seed)
    repo_files, general_files, query_files = _split_corpus(lines)
    stdlib = general.stdlib_root()
    work = Path(tempfile.mkdtemp(prefix="swiftguard-bench-"))
    try:
        for path in repo_files:
            target = work / path.relative_to(stdlib)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        rss_before = rss_bytes()
        service = DatastoreService(work, encode, key, encode_batch, persist=False)
        started = time.perf_counter()
        service.start()
        service.wait_idle()
        initial_seconds = time.perf_counter() - started
        stats = service.stats()
        report: dict[str, Any] = {
            "tokenizer": str(tokenizer_path or "default model"),
            "corpus": f"Python {sys.version.split()[0]} stdlib at {stdlib}",
            "initial_index": {
                "files": stats["files"],
                "lines": sum(p.read_text(encoding="utf-8").count("\n") for p in repo_files),
                "tokens": stats["tokens"],
                "seconds": round(initial_seconds, 3),
                "index_bytes": stats["index_bytes"],
                "bytes_per_token": round(stats["index_bytes"] / max(stats["tokens"], 1), 1),
                "segments": stats["segments"],
                "rss_growth_bytes": rss_bytes() - rss_before,
            },
        }

        started = time.perf_counter()
        segment = general.build(encode, encode_batch, general_files, general.DEFAULT_BUDGET)
        service.use_general(general.CORPORA["python"], segment)
        report["general_index"] = {"tokens": service.general_sources["python"].index.tokens,
                                   "seconds": round(time.perf_counter() - started, 3), "index_bytes": segment.nbytes}

        contexts = []
        for path in rng.sample(query_files, min(len(query_files), 200)):
            ids = encode(path.read_text(encoding="utf-8"))
            for _ in range(max(1, queries // 200)):
                if len(ids) > 80:
                    end = rng.randrange(64, len(ids))
                    contexts.append(ids[end - 64 : end])
        contexts = contexts[:queries]
        repository = service.repository_source
        found_k = []

        def query_repository(i: int) -> None:
            found = repository.retrieve(contexts[i])
            found_k.append(found[0].match_length if found else 0)

        report["retrieval_repository"] = _percentiles(_timed(len(contexts), query_repository))
        report["retrieval_repository"]["hit_rate"] = round(sum(k > 0 for k in found_k) / len(found_k), 3)
        report["retrieval_repository"]["mean_k_of_hits"] = round(statistics.mean(k for k in found_k if k) or 0, 2)
        python_sources = service.datastore.for_language("python")
        report["retrieval_repository_and_general"] = _percentiles(
            _timed(len(contexts), lambda i: python_sources.retrieve(contexts[i])))

        # One-line edits in a 1,000-line file of the repository.
        target = max((p for p in repo_files if p.read_text(encoding="utf-8").count("\n") >= 1000),
                     key=lambda p: -abs(p.read_text(encoding="utf-8").count("\n") - 1000))
        rel = target.relative_to(stdlib).as_posix()
        text = target.read_text(encoding="utf-8")
        file_lines = text.splitlines(keepends=True)[:1000]
        merges: list[float] = []

        def edit(i: int) -> None:
            row = rng.randrange(len(file_lines))
            line = file_lines[row]
            file_lines[row] = line[: len(line) // 2] + f"x{i}" + line[len(line) // 2 :]
            service.repository.apply({rel: FileContent("".join(file_lines), None)})

        service.repository.apply({rel: FileContent("".join(file_lines), None)})
        update_seconds = []
        for i in range(edits):
            update_seconds += _timed(1, lambda _: edit(i))
            started = time.perf_counter()
            while service.repository.index.compact():
                pass
            merges.append(time.perf_counter() - started)
        report["update_one_line_edit_1000_lines"] = _percentiles(update_seconds)
        report["update_one_line_edit_1000_lines"]["file"] = rel
        report["merge_after_edit"] = _percentiles(merges)
        report["retrieval_after_edits"] = _percentiles(
            _timed(len(contexts), lambda i: python_sources.retrieve(contexts[i])))
        report["retrieval_after_edits"]["segments"] = len(service.repository.index.segments)

        prompt = encode(text)[:2000]
        lookup = ContextSource(prompt[:1500])
        report["context_source_2k"] = _percentiles(
            _timed(500, lambda i: lookup.retrieve(prompt[: 1500 + (i % 500)])))
        service.stop()
        report["rss_bytes"] = rss_bytes()
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsp_server.bench.datastore", description=__doc__)
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the default model's)")
    parser.add_argument("--lines", type=int, default=100_000, help="size of the repository to index")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--edits", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = run(args.tokenizer, args.lines, args.queries, args.edits, args.seed)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
