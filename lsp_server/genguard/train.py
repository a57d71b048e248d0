"""Train a GenGuard head on built shards and evaluate it on held-out repositories and languages.

Split: languages named with ``--holdout-language`` are never trained on (generalisation
to an unseen language); of the rest, a fixed hash of ``language/repository`` holds out a
share of whole repositories (no function of a held-out repository is trained on).

Training: cross-entropy with class weights inverse to the class frequencies (stop
positions outnumber continue ones after a long excess tail, or the reverse), Adam, on
standardised features; the standardisation is folded back into the layer afterwards, so
the shipped head is an ordinary layer on the raw final-norm hidden state.

Evaluation replays each held-out sample through the real ``GenGuardStop`` rule, token by
token, and compares the cut with the tree-sitter end of the function:
- *early*: the cut drops part of the requested code (what could cost pass@1);
- *stopped*: the rule stopped at or after the end; *tokens late* counts the tokens
  generated after the end before the stop (tokens that were wasted);
- *missed*: the sample had excess and the rule never stopped within the sample.
Precision of the stop decision = stopped / (stopped + early); recall = stopped / samples
with excess.  Token-level precision/recall of the classifier itself is reported too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import IGNORE, shard_files
from .head import GuardHead, HeadInfo, load_head, save_head
from .rule import GenGuardStop


@dataclass
class Dataset:
    features: np.ndarray
    labels: np.ndarray
    token_ids: np.ndarray
    sample_index: np.ndarray
    language: np.ndarray
    repo: np.ndarray
    kind: np.ndarray
    meta: list[dict[str, Any]]
    picks: np.ndarray | None = None
    """The model's greedy token from each row's state, -1 where the shard did not store it."""

    @property
    def samples(self) -> int:
        return len(self.language)

    def rows(self, samples: np.ndarray) -> np.ndarray:
        """Position mask of the given sample mask."""
        return samples[self.sample_index]


def load_shards(paths: list[Path]) -> Dataset:
    files = shard_files(paths)
    parts: dict[str, list[np.ndarray]] = {}
    metas, offset = [], 0
    for file in files:
        with np.load(file, allow_pickle=False) as data:
            for key in ("features", "labels", "token_ids", "sample_language", "sample_repo", "sample_kind"):
                parts.setdefault(key, []).append(data[key])
            parts.setdefault("sample_index", []).append(data["sample_index"] + offset)
            parts.setdefault("picks", []).append(data["picks"] if "picks" in data.files
                                                 else np.full(len(data["labels"]), -1, dtype=np.int32))
            offset += len(data["sample_language"])
            metas.append(json.loads(str(data["meta"])))
    if not metas:
        raise FileNotFoundError(f"no shards in {', '.join(map(str, paths))}")
    cat = {key: np.concatenate(value) for key, value in parts.items()}
    return Dataset(cat["features"], cat["labels"], cat["token_ids"], cat["sample_index"], cat["sample_language"],
                   cat["sample_repo"], cat["sample_kind"], metas, cat["picks"])


def split(data: Dataset, holdout_languages: set[str], fraction: float, tune_fraction: float = 0.15) -> dict[str, np.ndarray]:
    """Sample masks by whole repositories: train, tune (threshold), held-out repositories, held-out languages."""
    held_lang = np.isin(data.language, sorted(holdout_languages))
    bucket = np.array([zlib.crc32(f"{lang}/{repo}".encode()) % 1000 for lang, repo in zip(data.language, data.repo)])
    held_repo = bucket < fraction * 1000
    tune = ~held_repo & (bucket < (fraction + tune_fraction) * 1000)
    return {"train": ~held_lang & ~held_repo & ~tune, "tune": ~held_lang & tune,
            "heldout_repos": ~held_lang & held_repo, "heldout_language": held_lang}


def train_head(features: np.ndarray, labels: np.ndarray, width: int = 0, epochs: int = 30, seed: int = 0,
               batch: int = 2048, lr: float = 2e-3, weight_decay: float = 1e-4) -> GuardHead:
    """Fit a head on (features, labels in {0, 1}); class weights balance the two classes."""
    torch.manual_seed(seed)
    x = torch.from_numpy(features.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-3)
    x = (x - mean) / std
    counts = torch.bincount(y, minlength=2).float().clamp_min(1)
    weights = counts.sum() / (2 * counts)
    head = GuardHead(x.shape[1], width)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(y) / batch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for first in range(0, len(y), batch):
            index = order[first : first + batch]
            optimizer.zero_grad()
            loss_fn(head(x[index]), y[index]).backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():  # fold the standardisation into the first layer: the head takes raw states
        first = head.inner if width else head.out
        first.bias -= (first.weight * (mean / std)).sum(1)
        first.weight /= std
    return head.eval()


def stop_probabilities(head: GuardHead, data: Dataset) -> np.ndarray:
    """The head's P(stop) for every position of ``data``: scored once per head, then shared by
    tuning, replay and metrics (each used to convert and score the whole dataset again)."""
    return head.stop_probability(torch.from_numpy(data.features.astype(np.float32)))


def token_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = probabilities >= threshold
    truth = labels == 1
    tp = int((predicted & truth).sum())
    return {
        "positions": len(labels),
        "precision": tp / max(1, int(predicted.sum())),
        "recall": tp / max(1, int(truth.sum())),
        "accuracy": float((predicted == truth).mean()) if len(labels) else 0.0,
    }


def replay(head: GuardHead, tokenizer: Any, data: Dataset, samples: np.ndarray, threshold: float,
           min_new_tokens: int, probabilities: np.ndarray | None = None,
           per_language: dict[str, float] | None = None) -> dict[str, Any]:
    """Run the real line-voting rule over each selected sample and compare with the tree-sitter end.

    ``per_language`` thresholds win over ``threshold`` for their languages, as in the engine."""
    if probabilities is None:
        probabilities = stop_probabilities(head, data)
    starts = np.searchsorted(data.sample_index, np.arange(data.samples + 1))
    early = stopped = missed = no_excess = 0
    late: list[int] = []
    lost: list[int] = []
    saved = 0
    total_tokens = 0
    for sample in np.flatnonzero(samples):
        rows = slice(starts[sample], starts[sample + 1])
        ids, labels, probs = data.token_ids[rows], data.labels[rows], probabilities[rows]
        end = int((labels == 0).sum())  # continue tokens come first: the first `end` tokens are the function
        has_excess = bool((labels == 1).any())
        total_tokens += len(ids)
        language = str(data.language[sample])
        rule = GenGuardStop(head, tokenizer, (per_language or {}).get(language, threshold), min_new_tokens,
                            language=language)
        decision, at = None, len(ids)
        for index, (token, probability) in enumerate(zip(ids, probs)):
            decision = rule.push(int(token), float(probability))
            if decision is not None:
                at = index + 1
                break
        if decision is None:
            if has_excess:
                missed += 1
                late.append(len(ids) - end)
            else:
                no_excess += 1
            continue
        text = tokenizer.decode(ids)
        function = tokenizer.decode(ids[:end]).rstrip()
        if len(text[: decision.keep_chars].rstrip()) < len(function):
            early += 1
            lost.append(end - len(tokenizer(text[: decision.keep_chars], add_special_tokens=False)["input_ids"]))
        else:
            stopped += 1
            late.append(at - end)
            saved += len(ids) - at
    n = int(samples.sum())
    with_excess = n - no_excess
    return {
        "samples": n,
        "stop_precision": stopped / max(1, stopped + early),
        "stop_recall": stopped / max(1, with_excess),
        "early": early,
        "stopped": stopped,
        "missed": missed,
        "no_excess": no_excess,
        "tokens_late_mean": float(np.mean(late)) if late else 0.0,
        "tokens_late_median": float(np.median(late)) if late else 0.0,
        "tokens_lost_when_early_mean": float(np.mean(lost)) if lost else 0.0,
        "tokens_saved_share": saved / max(1, total_tokens),
    }


def tune_threshold(head: GuardHead, tokenizer: Any, data: Dataset, samples: np.ndarray, min_new_tokens: int,
                   max_early: float = 0.01,
                   probabilities: np.ndarray | None = None) -> tuple[float, list[dict[str, Any]]]:
    """The threshold with the fewest late tokens among those that cut early in at most ``max_early`` of samples.

    The grid is fine near 1: an early cut costs correctness while a late one costs a few
    tokens, so the useful thresholds tend to be high.
    """
    if not samples.any():
        return 0.5, []
    if probabilities is None:
        probabilities = stop_probabilities(head, data)
    grid = []
    for threshold in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99):
        result = replay(head, tokenizer, data, samples, threshold, min_new_tokens, probabilities)
        grid.append({"threshold": threshold, **result})
    ok = [g for g in grid if g["early"] <= max_early * max(1, g["samples"])]
    best = min(ok, key=lambda g: (g["tokens_late_mean"] + 1000 * (g["stop_recall"] < 0.5), g["threshold"])) if ok \
        else min(grid, key=lambda g: g["early"])
    return float(best["threshold"]), grid


MIN_LANGUAGE_TUNE_SAMPLES = 20


def language_thresholds(head: GuardHead, tokenizer: Any, data: Dataset, samples: np.ndarray, min_new_tokens: int,
                        max_early: float, probabilities: np.ndarray | None = None) -> dict[str, float]:
    """A threshold per language with at least ``MIN_LANGUAGE_TUNE_SAMPLES`` tuning samples.

    Code ends differently per language (a dedent, a closing brace), and so do the
    classifier's mistakes; a language with too few samples keeps the global threshold.
    """
    if probabilities is None:
        probabilities = stop_probabilities(head, data)
    thresholds = {}
    for language in sorted(set(data.language[samples].tolist())):
        chosen = samples & (data.language == language)
        if chosen.sum() >= MIN_LANGUAGE_TUNE_SAMPLES:
            thresholds[language], _grid = tune_threshold(head, tokenizer, data, chosen, min_new_tokens, max_early,
                                                         probabilities)
    return thresholds


def _tokenizer(args: argparse.Namespace) -> Any:
    from transformers import AutoTokenizer

    from ..engine.loader import resolve_source

    source, _name = resolve_source(args.model, lambda _m: None)
    return AutoTokenizer.from_pretrained(source)


def _evaluate(head: GuardHead, tokenizer: Any, data: Dataset, masks: dict[str, np.ndarray], threshold: float,
              min_new_tokens: int, per_language: dict[str, float], probabilities: np.ndarray) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, mask in masks.items():
        for kind in ("teacher", "generated"):
            chosen = mask & (data.kind == kind)
            if not chosen.any():
                continue
            rows = data.rows(chosen) & (data.labels != IGNORE)
            report[f"{name}/{kind}"] = {
                "tokens": token_metrics(probabilities[rows], data.labels[rows], threshold),
                "rule": replay(head, tokenizer, data, chosen, threshold, min_new_tokens, probabilities, per_language),
                "languages": sorted(set(data.language[chosen].tolist())),
            }
    return report


def _summary(data: Dataset, masks: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, mask in masks.items():
        counts: dict[str, Any] = {}
        for lang in sorted(set(data.language[mask].tolist())):
            for kind in ("teacher", "generated"):
                chosen = mask & (data.language == lang) & (data.kind == kind)
                if chosen.any():
                    rows = data.rows(chosen)
                    counts[f"{lang}/{kind}"] = {
                        "functions": int(chosen.sum()),
                        "repos": len(set(data.repo[chosen].tolist())),
                        "continue": int((data.labels[rows] == 0).sum()),
                        "stop": int((data.labels[rows] == 1).sum()),
                    }
        out[name] = counts
    return out


def run_train(args: argparse.Namespace) -> int:
    if not args.data or args.out is None:
        print("error: train needs --data SHARDS and --out HEAD.safetensors", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = load_shards(args.data)
    masks = split(data, set(args.holdout_language), args.holdout_fraction, args.tune_fraction)
    tokenizer = _tokenizer(args)
    meta = data.meta[0]
    hidden_size = int(data.features.shape[1])
    train_kinds = [k for k in args.train_kinds.split(",") if k]
    # The threshold decides on the model's own generations (what the rule sees at run time) when the
    # tuning repositories have any; teacher-forced code ends differently from what the model writes.
    generated_tune = masks["tune"] & (data.kind == "generated")
    tune_samples = generated_tune if generated_tune.any() else masks["tune"]
    mixes = {"+".join(train_kinds): train_kinds}
    if getattr(args, "compare_mixes", False):
        mixes = {"teacher": ["teacher"], "generated": ["generated"], "teacher+generated": ["teacher", "generated"]}
    results: dict[str, Any] = {}
    chosen_head, chosen_threshold, chosen_name, chosen_per_language = None, 0.5, "", {}
    for name, kinds in mixes.items():
        train_samples = masks["train"] & np.isin(data.kind, kinds)
        rows = data.rows(train_samples) & (data.labels != IGNORE)
        if not rows.any():
            print(f"skipping mix {name}: no training positions", file=sys.stderr)
            continue
        fit_started = time.perf_counter()
        head = train_head(data.features[rows], data.labels[rows], args.width, args.epochs, args.seed)
        fit_seconds = time.perf_counter() - fit_started
        probabilities = stop_probabilities(head, data)
        if args.threshold is None:  # tuned on repositories it was not trained on: a head that overfits shows it
            threshold, grid = tune_threshold(head, tokenizer, data, tune_samples, args.min_new_tokens, args.max_early,
                                             probabilities)
            per_language = language_thresholds(head, tokenizer, data, tune_samples, args.min_new_tokens,
                                               args.max_early, probabilities)
        else:
            threshold, grid, per_language = args.threshold, [], {}
        results[name] = {
            "train_positions": int(rows.sum()),
            "fit_seconds": round(fit_seconds, 1),
            "threshold": threshold,
            "threshold_tuned_on": "generated" if generated_tune.any() else "teacher+generated",
            "thresholds_per_language": per_language,
            "threshold_grid_on_tune": grid,
            "eval": _evaluate(head, tokenizer, data, {k: v for k, v in masks.items() if k not in ("train", "tune")},
                              threshold, args.min_new_tokens, per_language, probabilities),
        }
        if name == "+".join(train_kinds) or chosen_head is None:
            chosen_head, chosen_threshold, chosen_name, chosen_per_language = head, threshold, name, per_language
    if chosen_head is None:
        print("error: nothing to train on", file=sys.stderr)
        return 1
    summary = _summary(data, masks)
    info = HeadInfo(
        base_model=str(meta["base_model"]), hidden_size=hidden_size, tokenizer_hash=str(meta["tokenizer_hash"]),
        threshold=chosen_threshold,
        training={
            "mix": chosen_name, "thresholds": chosen_per_language, "width": args.width, "epochs": args.epochs, "min_new_tokens": args.min_new_tokens,
            "holdout_languages": sorted(args.holdout_language), "holdout_fraction": args.holdout_fraction,
            "tune_fraction": args.tune_fraction,
            "sources": sorted({s for m in data.meta for s in m.get("sources", [])}),
            "train_counts": summary["train"], "heldout": results[chosen_name]["eval"],
            "alignment": "hidden[j] = state after token j-1 (from which token j was predicted)",
        },
    )
    save_head(args.out, chosen_head, info)
    report = {"head": str(args.out), "mix": chosen_name, "threshold": chosen_threshold, "data": summary,
              "results": results, "seconds": round(time.perf_counter() - started, 1)}
    return emit_report(report, args.report)


def emit_report(report: dict, path: Path | None) -> int:
    """Print a JSON report (and save it to ``path`` when given); the command's exit status."""
    text = json.dumps(report, indent=2)
    if path:
        path.write_text(text)
    print(text)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    head_path = args.head or args.out
    if not args.data or head_path is None:
        print("error: eval needs --data SHARDS and --head HEAD.safetensors", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    data = load_shards(args.data)
    head, info = load_head(head_path, int(data.features.shape[1]), str(data.meta[0]["tokenizer_hash"]))
    masks = split(data, set(args.holdout_language or info.training.get("holdout_languages", [])),
                  float(info.training.get("holdout_fraction", args.holdout_fraction)),
                  float(info.training.get("tune_fraction", args.tune_fraction)))
    threshold = info.threshold if args.threshold is None else args.threshold
    per_language = dict(info.training.get("thresholds", {})) if args.threshold is None else {}
    report = {"head": str(head_path), "base_model": info.base_model, "threshold": threshold,
              "thresholds_per_language": per_language,
              "eval": _evaluate(head, _tokenizer(args), data,
                                {k: v for k, v in masks.items() if k not in ("train", "tune")},
                                threshold, args.min_new_tokens, per_language, stop_probabilities(head, data))}
    return emit_report(report, args.report)
