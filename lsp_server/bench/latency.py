"""``swiftguard latency``: the spine's numbers on this machine.

Measures model load (cold: a fresh process importing torch and reading the weights;
warm: loading again in a process that already has torch and the files in the page
cache), completion latency and tokens/s, a typed-ahead hit, and time to first token at
the context budget (``--context-tokens``) with and without KV prefix reuse, on the engine
the server runs (speculating, unless ``--no-speculation``).  Every figure is the median
of ``--repeat`` runs made in the same process.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..api import CompletionRequest

_SOURCE = Path(__file__).resolve().parents[1]


def _context_file(min_chars: int) -> str:
    """Real code as context: this package's own sources, concatenated to the size needed."""
    text = ""
    for path in sorted(_SOURCE.rglob("*.py")):
        text += path.read_text()
        if len(text) >= min_chars:
            break
    return text


def _cold_load_seconds(model: str | None, device: str, dtype: str) -> float:
    code = (
        "import time; t=time.perf_counter(); from lsp_server.engine import load; "
        f"load({model!r}, {device!r}, {dtype!r}); print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(model: str | None, device: str, dtype: str, repeat: int, max_new_tokens: int, context_tokens: int,
        suffix_share: float | None, speculation: bool = True) -> dict[str, Any]:
    from ..engine import build_engine, load

    cold = [_cold_load_seconds(model, device, dtype) for _ in range(repeat)]
    warm = []
    for _ in range(repeat):
        started = time.perf_counter()
        load(model, device, dtype)
        warm.append(time.perf_counter() - started)
    engine = build_engine(model, device, dtype, speculation=speculation)
    if suffix_share is not None:
        engine.prompts.suffix_share = suffix_share
    context = _context_file(12_000)
    # Cut at a line start in the middle of real code, with the rest as suffix.
    cut = context.index("\n", len(context) * 3 // 4) + 1
    prefix, suffix = context[:cut], context[cut:]
    never = threading.Event()

    def complete(pre: str, key: str, reuse: bool, tokens: int = max_new_tokens):
        engine.decoder.reuse_kv = reuse
        return engine.complete(CompletionRequest(pre, suffix, tokens, context_tokens=context_tokens, document_key=key), never)

    latency, tps, ttft_fresh, ttft_reuse, reuse_counts, typeahead, equal = [], [], [], [], [], [], []
    for index in range(repeat):
        engine.decoder.kv.clear()
        engine.typeahead.clear()
        first = complete(prefix, f"fresh{index}", reuse=False)
        latency.append(first.stats.seconds)
        tps.append(first.stats.tokens_per_second)
        ttft_fresh.append(first.stats.time_to_first_token)
        if first.text:
            typed = first.text[:3]
            hit = complete(prefix + typed, f"fresh{index}", reuse=True)
            typeahead.append(hit.stats.seconds)
        # Next keystroke at the same place: a new character typed, the cache of the last prompt kept.
        complete(prefix, f"reuse{index}", reuse=True, tokens=1)
        edited = prefix + "#"
        with_reuse = complete(edited, f"reuse{index}b", reuse=True)
        ttft_reuse.append(with_reuse.stats.time_to_first_token)
        reuse_counts.append((with_reuse.stats.reused_prompt_tokens, with_reuse.stats.prompt_tokens))
        engine.decoder.kv.clear()
        without = complete(edited, f"reuse{index}c", reuse=False)
        equal.append(with_reuse.text == without.text)
    median = statistics.median
    return {
        "model": engine.describe(),
        "repeat": repeat,
        "load_cold_seconds": median(cold),
        "load_warm_seconds": median(warm),
        "completion_seconds": median(latency),
        "completion_tokens_per_second": median(tps),
        "max_new_tokens": max_new_tokens,
        "context_tokens": context_tokens,
        "suffix_share": engine.prompts.suffix_share,
        "typeahead_hit_seconds": median(typeahead) if typeahead else None,
        "prompt_tokens": reuse_counts[-1][1],
        "reused_prompt_tokens": reuse_counts[-1][0],
        "ttft_without_reuse_seconds": median(ttft_fresh),
        "ttft_with_reuse_seconds": median(ttft_reuse),
        "reuse_output_equal": equal,
    }


def main(args: Any) -> int:
    result = run(args.model, args.device, args.dtype, args.repeat, args.max_new_tokens, args.context_tokens,
                 args.suffix_share, not args.no_speculation)
    print(json.dumps(result, indent=2))
    return 0
