"""Training the draft head from stored states.

A shard stores, per position, the final-norm hidden state and the token it chose:
``swiftguard drafthead build-data`` for windows of real files (``file``), ``swiftguard
genguard build-data`` for function bodies run through the model (``teacher``) and for the
model's own greedy output (``generated``).  Two neighbouring positions of one sample
are one training pair: from ``(h_j, token_j)`` predict the token the model itself picks
next, ``argmax(lm_head(h_{j+1}))``.  That label, not the text's real next token, is what
verification accepts: in teacher-forced code the two differ at about one position in
four, and training on the text taught the head to guess the author instead of the
model.  Cross-entropy over the head's vocabulary, plus a small pull of the predicted
state toward the true ``h_{j+1}``.  The head reads windows of consecutive positions of a
sample, each attending to those before it (``context`` positions at most), and is
unrolled ``depth`` steps as it runs: step two starts from the state step one *predicted*
(and the token really fed next), so the head learns to guess two and more tokens ahead
from its own output, not only from the model's states.  Whole repositories are held out
for evaluation, and the report compares the head with a bigram table built from the same
training pairs (the best a text-only guess of the next token does from this data).
"""

from __future__ import annotations

import copy
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..genguard.data import greedy_picks
from ..genguard.head import STOP
from ..genguard.train import Dataset
from . import TRAIN_LR
from .head import DraftHead, score_rows
from .scored_loss import scored_cross_entropy


@dataclass
class Pairs:
    """Row ``j`` of the data, the ``depth`` tokens fed after it and the model's pick after each (in the same sample)."""

    rows: np.ndarray
    ahead: np.ndarray
    """[n, depth]: tokens j + 1 .. j + depth, as fed to the model (the head's inputs when unrolled)."""
    labels: np.ndarray
    """[n, depth]: the token the model picks at j + 1 .. j + depth (what the head should guess)."""

    @property
    def next_tokens(self) -> np.ndarray:
        return self.labels[:, 0]

    def subset(self, mask: np.ndarray) -> Pairs:
        return Pairs(self.rows[mask], self.ahead[mask], self.labels[mask])


def pairs(data: Dataset, samples: np.ndarray, labels: np.ndarray, depth: int = 1) -> Pairs:
    """Positions with ``depth`` more positions after them inside the selected samples (a sample mask);
    ``labels[i]`` is the token the model picks from row ``i``'s state (see ``model_picks``)."""
    index = data.sample_index
    rows = np.nonzero((index[:-depth] == index[depth:]) & samples[index[:-depth]])[0]
    steps = range(1, depth + 1)
    ahead = np.stack([data.token_ids[rows + step] for step in steps], axis=1).astype(np.int64)
    return Pairs(rows, ahead, np.stack([labels[rows + step] for step in steps], axis=1).astype(np.int64))


def heldout_parts(data: Dataset, test: Pairs) -> dict[str, Pairs]:
    """Held-out pairs by kind of sample, with the model's generations split where the
    requested function ends (GenGuard's stop label of the token to guess).

    Generated samples run past the function's end to their token budget, and three
    quarters of their positions come after it (tests, prints, a ``main``).  At run time
    GenGuard stops there, so ``generated`` (inside the function) is the part whose
    accuracy the editor feels; ``generated_after_end`` is reported beside it.
    """
    kinds = data.kind[data.sample_index[test.rows]].astype(object)
    kinds[(kinds == "generated") & (data.labels[test.rows + 1] == STOP)] = "generated_after_end"
    return {str(kind): test.subset(kinds == kind) for kind in np.unique(kinds)}


def greedy_labels(features: np.ndarray, lm_head: torch.nn.Module, chunk: int = 4096) -> np.ndarray:
    """The model's greedy token from every stored state (the full vocabulary's argmax, in the head's dtype)."""
    dtype = next(lm_head.parameters()).dtype
    picks = [greedy_picks(lm_head, torch.from_numpy(features[start:start + chunk]).to(dtype))
             for start in range(0, len(features), chunk)]
    return np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, np.int64)


def model_picks(data: Dataset, lm_head: torch.nn.Module) -> np.ndarray:
    """Every row's label: the picks the shards stored, the LM head's argmax where they did not
    (shards built before picks were stored)."""
    labels = np.full(len(data.token_ids), -1, np.int64) if data.picks is None else data.picks.astype(np.int64)
    missing = labels < 0
    if missing.any():
        labels[missing] = greedy_labels(data.features[missing], lm_head)
    return labels


def frequent_vocab(data: Dataset, train: Pairs, size: int) -> torch.Tensor:
    """The ``size`` most frequent labels of the training pairs: what the head can propose."""
    counts = np.bincount(train.next_tokens, minlength=int(data.token_ids.max()) + 1)
    return torch.from_numpy(np.argsort(-counts, kind="stable")[:size].copy())


def bigram_accuracy(data: Dataset, train: Pairs, test: Pairs, k: int = 4) -> tuple[float, float]:
    """Top-1 and top-k accuracy of a next-token table keyed by the current token alone."""
    table: dict[int, Counter[int]] = defaultdict(Counter)
    for token, following in zip(data.token_ids[train.rows].tolist(), train.next_tokens.tolist()):
        table[token][following] += 1
    top1 = topk = 0
    for token, following in zip(data.token_ids[test.rows].tolist(), test.next_tokens.tolist()):
        guesses = [guess for guess, _ in table[token].most_common(k)]
        top1 += bool(guesses) and guesses[0] == following
        topk += following in guesses
    return top1 / max(1, len(test.rows)), topk / max(1, len(test.rows))


@dataclass
class Windows:
    """Runs of consecutive rows of one sample, at most ``length`` long: what the head reads at
    once in training (each position attends to the positions before it in its window)."""

    starts: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


def windows(data: Dataset, samples: np.ndarray, length: int, overlap: int = 0) -> Windows:
    """Windows over every row of the selected samples (a sample mask), starting every
    ``length - overlap`` rows: with ``overlap`` ``depth - 1`` each pair's unrolled chain lies
    whole in the window that starts at or before its row (``window_of``)."""
    stride = max(1, length - overlap)
    index = data.sample_index
    first = np.r_[0, np.nonzero(index[1:] != index[:-1])[0] + 1]
    ends = np.r_[first[1:], len(index)]
    starts, lengths = [], []
    for begin, end in zip(first, ends):
        if not samples[index[begin]]:
            continue
        for start in range(begin, end, stride):
            starts.append(start)
            lengths.append(min(length, end - start))
    return Windows(np.array(starts, np.int64), np.array(lengths, np.int64))


def window_of(spans: Windows, rows: np.ndarray) -> np.ndarray:
    """For each row, the window whose start is the last one at or before it."""
    return np.searchsorted(spans.starts, rows, side="right") - 1


class _Batches:
    """What training and evaluation index into, built once: states, tokens, embeddings, score rows."""

    def __init__(self, data: Dataset, labels: np.ndarray, embed: torch.Tensor, scores: torch.Tensor,
                 vocab: torch.Tensor) -> None:
        self.features = torch.from_numpy(data.features)
        self.tokens = torch.from_numpy(data.token_ids.astype(np.int64))
        self.embed = embed
        self.scores = scores
        position = torch.full((max(len(embed), int(vocab.max()) + 1, int(labels.max(initial=0)) + 1),), -1,
                              dtype=torch.int64)  # any token id
        position[vocab] = torch.arange(len(vocab))
        index = data.sample_index
        follows = np.zeros(len(index), bool)
        follows[:-1] = index[:-1] == index[1:]
        nxt = np.where(follows, np.r_[labels[1:], 0], 0)
        self.targets = torch.where(torch.from_numpy(follows), position[torch.from_numpy(nxt)], -1)
        """Per row: the position in the head's vocabulary of the model's pick at the next row
        (-1: no next row, or a pick outside the vocabulary)."""

    def window_rows(self, spans: Windows, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[len(chosen), T] row indices (a short window repeats its last row) and which are real."""
        lengths = torch.from_numpy(spans.lengths)[chosen]
        offsets = torch.arange(int(lengths.max()))
        real = offsets[None] < lengths[:, None]
        rows = torch.from_numpy(spans.starts)[chosen][:, None] + torch.minimum(offsets[None], lengths[:, None] - 1)
        return rows, real

    def unroll(self, head: DraftHead, rows: torch.Tensor, depth: int) -> list[torch.Tensor]:
        """The head's predicted states [B, T, hidden] for steps 1..depth at every position of
        the windows ``rows`` (``DraftHead.forward``)."""
        return head(self.features[rows].float(), self.embed[self.tokens[rows]].float(), depth)


def accuracy(head: DraftHead, batches: _Batches, data: Dataset, test: Pairs, context: int,
             k: int = 4) -> list[tuple[float, float]]:
    """Per step, top-1 and top-k accuracy of the head on ``test`` given the earlier tokens right
    (a token outside its vocabulary is a miss), each pair read in a window as in training."""
    depth = test.ahead.shape[1]
    samples = np.zeros(data.samples, bool)
    samples[data.sample_index[test.rows]] = True
    spans = windows(data, samples, max(context, depth), overlap=depth - 1)
    owner = window_of(spans, test.rows)
    top1, topk = [0] * depth, [0] * depth
    with torch.inference_mode():
        for start in range(0, len(spans), 32):
            chosen = torch.arange(start, min(start + 32, len(spans)))
            rows, _real = batches.window_rows(spans, chosen)
            states = batches.unroll(head, rows, depth)
            mine = np.nonzero((owner >= start) & (owner < start + len(chosen)))[0]
            if not len(mine):
                continue
            which = torch.from_numpy(owner[mine] - start)
            offset = torch.from_numpy(test.rows[mine] - spans.starts[owner[mine]])
            for step, state in enumerate(states):
                guesses = (state[which, offset + step] @ batches.scores.T).topk(k, dim=-1).indices
                target = batches.targets[torch.from_numpy(test.rows[mine]) + step]
                top1[step] += int((guesses[:, 0] == target).sum())
                topk[step] += int((guesses == target[:, None]).any(-1).sum())
    n = max(1, len(test.rows))
    return [(round(a / n, 3), round(b / n, 3)) for a, b in zip(top1, topk)]


def judged_part(tests: dict[str, Pairs]) -> str | None:
    """The held-out part a continued head is judged on against the head it started from: the
    generations inside the function (what the editor meets, ``heldout_parts``) where the shards
    have any, else the first part with pairs; None where no part has any."""
    for name in ("generated", *sorted(tests)):
        if name in tests and len(tests[name].rows):
            return name
    return None


def head_accuracy(head: DraftHead, data: Dataset, labels: np.ndarray, embed: torch.Tensor, lm_head: torch.nn.Module,
                  test: Pairs) -> tuple[list[tuple[float, float]], float]:
    """``accuracy`` of a trained head (float32 here, as training evaluates) outside training, and
    the seconds ``accuracy`` itself took: the head's copy and its score rows are prepared outside
    that timing, because the closing evaluation inside training, which it prices, reuses
    training's and would otherwise be overpriced by that setup times the scale."""
    head = copy.deepcopy(head).float().eval()
    batches = _Batches(data, labels, embed.float(), score_rows(lm_head, head.vocab, data.features.shape[1]).float(),
                       head.vocab)
    started = time.perf_counter()
    result = accuracy(head, batches, data, test, head.context)
    return result, time.perf_counter() - started


def positions_read(data: Dataset, test: Pairs) -> int:
    """How many positions ``accuracy`` runs the head over for ``test``: every position of each
    sample holding one of its pairs (a part such as the generations inside the function shares
    its samples with another part, so pairs alone undercount the work)."""
    lengths = np.bincount(data.sample_index, minlength=data.samples)
    return int(lengths[np.unique(data.sample_index[test.rows])].sum())


def closing_evaluation_seconds(data: Dataset, tests: dict[str, Pairs], seconds: float, measured: Pairs) -> float:
    """About how long the evaluation of every held-out part after training takes, from one
    evaluation that took ``seconds`` over ``measured``: what a time budget must leave for it
    (``drafthead build --minutes 45`` ran 47 while it came after the budget)."""
    probe = positions_read(data, measured)
    return seconds * sum(positions_read(data, part) for part in tests.values()) / probe if probe else 0.0


def timed_probe(data: Dataset, labels: np.ndarray, embed: torch.Tensor, lm_head: torch.nn.Module,
                tests: dict[str, Pairs], head: DraftHead, pairs_probed: int = 4096) -> tuple[float, Pairs]:
    """Seconds the evaluation in ``head_accuracy`` takes over the first ``pairs_probed`` pairs of
    the largest held-out part, and those pairs: for ``closing_evaluation_seconds`` where no
    evaluation before training was timed anyway (a new head)."""
    part = max(tests.values(), key=lambda test: len(test.rows))
    probe = part.subset(np.arange(len(part.rows)) < pairs_probed)
    return (head_accuracy(head, data, labels, embed, lm_head, probe)[1] if len(probe.rows) else 0.0), probe


def mean_top1(result: Sequence[tuple[float, float]]) -> float:
    """The mean over the unrolled steps of first guesses right: how far a chain of the head's
    guesses gets, roughly, which is what the drafts are worth."""
    return sum(top1 for top1, _ in result) / max(1, len(result))


def pair_copies(kinds: np.ndarray, specs: list[str]) -> np.ndarray | None:
    """Per item (window or pair) of the given kinds, how many times an epoch sees it, from
    ``KIND=N`` specs (other kinds once); None without specs.  Raises ValueError on a malformed
    spec or a kind no item has."""
    if not specs:
        return None
    copies = np.ones(len(kinds), np.int64)
    for spec in specs:
        kind, _, count = spec.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{spec!r}: expected KIND=N with N >= 1")
        chosen = kinds == kind
        if not chosen.any():
            raise ValueError(f"{spec!r}: no training pair is of kind {kind!r} (kinds: {sorted(set(kinds.tolist()))})")
        copies[chosen] = int(count)
    return copies


def epoch_windows(usable: np.ndarray, copies: np.ndarray | None = None) -> torch.Tensor:
    """The windows one epoch goes through: every window with a position whose next token the
    head can propose (one outside its vocabulary teaches nothing), ``copies[i]`` times each.

    Repeating a kind of sample is how its weight is raised: the model's own generations are
    what the head meets at run time, and they are the scarce, expensive kind of data.
    """
    chosen = torch.from_numpy(np.nonzero(usable)[0])
    if copies is None:
        return chosen
    return chosen.repeat_interleave(torch.as_tensor(copies, dtype=torch.int64)[chosen])


class Trained(NamedTuple):
    """What ``train_draft_head`` returns: the head, what it was trained on, and how far it got."""

    head: DraftHead
    batches: _Batches
    steps: int
    """Optimizer steps taken: fewer than ``planned`` where a time budget ended training."""
    planned: int


_SCHEDULE_POINTS = 10_000
"""The one-cycle schedule's resolution when it runs on the share of a time budget."""


def train_draft_head(data: Dataset, train: Pairs, labels: np.ndarray, embed: torch.Tensor, lm_head: torch.nn.Module,
                     vocab_size: int = 16384, width: int = 1024, epochs: int = 6, seed: int = 0, batch: int = 2048,
                     lr: float = TRAIN_LR, progress: Callable[[str], None] = lambda _m: None,
                     evaluate: Callable[[DraftHead, _Batches], str] | None = None,
                     compute_dtype: torch.dtype = torch.float32, repeat: Sequence[str] = (),
                     context: int = 128, init: DraftHead | None = None,
                     report_every: float = 60.0, time_budget: float | None = None) -> Trained:
    """Fit a head on windows of the training pairs' samples; ``labels`` are the model's picks per
    row, ``embed`` the model's input embedding matrix, ``repeat`` (``KIND=N`` specs, see
    ``epoch_windows``) weights some kinds of sample more than others, ``batch`` is in positions;
    raises ValueError on a bad spec or when no position has a next token.

    The products run in ``compute_dtype`` (under autocast; the loss's in ``scored_loss``, which
    never stores the logits) while weights and optimizer state stay float32.  On this 2-core
    CPU (native bf16) bfloat16 steps took 320-334 ms against 572-633 in float32 (batch 512, two
    unrolled steps, 16k-token vocabulary), and a 2-epoch comparison on 120k pairs gave the same
    held-out accuracy (docs/draft-head.md); the head runs in the model's dtype anyway.  The CLI
    picks it like the model's dtype (``engine.device``): bfloat16 emulated in software is slower
    than float32.

    ``init`` continues training a trained head (a copy; its vocabulary, width and context), on
    new data without paying again for the epochs it already had.  ``progress`` hears of the
    steps every ``report_every`` seconds as well as after each epoch: an epoch of ``drafthead
    build`` runs for half an hour on a 2-core CPU, too long to show nothing.  ``evaluate``
    runs after the last epoch only: on the held-out parts of a first build's shards one
    evaluation took 50-55 s on the AMX Xeon (December 5), so two between epochs cost a tenth of
    the build's training.

    ``time_budget`` (seconds, the steps and their data) ends training where the
    epochs would take longer: the one-cycle schedule then runs on the share of the budget used,
    so the last steps still have a low rate.  ``drafthead build`` promises its minutes: on a
    2-core AMD EPYC without AMX its 2 epochs had taken 34 minutes of a build given 45 for everything.
    """
    torch.manual_seed(seed)
    depth = train.ahead.shape[1]
    if init is not None:
        head = copy.deepcopy(init).float().train().requires_grad_(True)
        vocab, context = head.vocab, head.context
    else:
        vocab = frequent_vocab(data, train, vocab_size)
        head = DraftHead(data.features.shape[1], width, vocab, context)
    batches = _Batches(data, labels, embed.float(), score_rows(lm_head, vocab, data.features.shape[1]).float(), vocab)
    scores = batches.scores.to(compute_dtype)  # the loss's products run in it, as autocast ran them
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    samples = np.zeros(data.samples, bool)
    samples[data.sample_index[train.rows]] = True
    spans = windows(data, samples, max(context, depth))
    usable = np.array([bool((batches.targets[start:start + n] >= 0).any())
                       for start, n in zip(spans.starts.tolist(), spans.lengths.tolist())], bool)
    if not usable.any():
        raise ValueError("no training pairs: the shards hold no positions with a next token")
    kinds = data.kind[data.sample_index[spans.starts]]
    copies = pair_copies(kinds, list(repeat))
    per_batch = max(1, batch // max(context, depth))
    steps = max(1, epochs * max(1, len(epoch_windows(usable, copies)) // per_batch))
    # With a time budget the schedule runs on whichever share is larger, of the steps or of the
    # budget, so the rate has come down by the time the budget ends training.
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps if time_budget is None
                                                   else _SCHEDULE_POINTS)
    started = reported = time.perf_counter()
    loss = torch.zeros(())
    done = 0

    def over_budget() -> bool:
        return time_budget is not None and time.perf_counter() - started >= time_budget

    for epoch in range(epochs):  # the schedule's length: epochs x (windows // per_batch) optimizer steps
        order = epoch_windows(usable, copies)
        order = order[torch.randperm(len(order))]
        for start in range(0, max(1, len(order) - per_batch + 1), per_batch):
            if done == steps or (done and over_budget()):  # at least one step, however short the budget
                break
            rows, real = batches.window_rows(spans, order[start : start + per_batch])
            offsets = torch.arange(rows.shape[1])[None]
            loss = torch.zeros(())
            with torch.autocast("cpu", dtype=compute_dtype, enabled=compute_dtype != torch.float32):
                for step, predicted in enumerate(batches.unroll(head, rows, depth)):
                    target = torch.where(real & (offsets >= step), batches.targets[rows], -1)
                    loss = loss + scored_cross_entropy(predicted.flatten(0, 1), scores, target.flatten())
                    following = real[:, 1:] & real[:, :-1]
                    true_state = batches.features[rows[:, 1:]].float()
                    loss = loss + 0.1 * torch.nn.functional.smooth_l1_loss(predicted[:, :-1].float()[following],
                                                                           true_state[following])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if time_budget is None:
                schedule.step()
            else:
                share = max(done / steps, (time.perf_counter() - started) / max(time_budget, 1e-9))
                while schedule.last_epoch < min(_SCHEDULE_POINTS, round(share * _SCHEDULE_POINTS)):
                    schedule.step()
            if time.perf_counter() - reported >= report_every:
                reported = time.perf_counter()
                elapsed = reported - started
                to_go = elapsed / done * (steps - done)
                if time_budget is not None:
                    to_go = min(to_go, time_budget - elapsed)
                progress(f"epoch {epoch + 1}/{epochs}: step {done}/{steps}, loss {loss.item():.3f} "
                         f"({elapsed:.0f}s, about {to_go:.0f}s to go)")
        out_of_time = done < steps and over_budget()
        last_epoch = out_of_time or epoch == epochs - 1
        report = evaluate(head, batches) if evaluate is not None and last_epoch else ""
        progress(f"epoch {epoch + 1}/{epochs} ({len(order)} windows of up to {max(context, depth)} positions): "
                 f"loss {loss.item():.3f} {report} ({time.perf_counter() - started:.0f}s)")
        if out_of_time:
            progress(f"time budget reached after {done} of {steps} steps")
            break
    return Trained(head.eval(), batches, done, steps)
