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
state toward the true ``h_{j+1}``.  The head is unrolled ``depth`` steps as it runs: step
two starts from the state step one *predicted* (and the token really fed next), so the
head learns to guess two and more tokens ahead from its own output, not only from the
model's states.  Whole repositories are held out for evaluation, and the report compares
the head with a bigram table built from the same training pairs (the best a text-only
guess of the next token does from this data).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..genguard.data import greedy_picks
from ..genguard.head import STOP
from ..genguard.train import Dataset
from .head import DraftHead, score_rows


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


class _Batches:
    """What training and evaluation index into, built once: states, tokens, embeddings, score rows."""

    def __init__(self, data: Dataset, embed: torch.Tensor, scores: torch.Tensor, vocab: torch.Tensor) -> None:
        self.features = torch.from_numpy(data.features)
        self.tokens = torch.from_numpy(data.token_ids.astype(np.int64))
        self.embed = embed
        self.scores = scores
        position = torch.full((max(len(embed), int(vocab.max()) + 1),), -1, dtype=torch.int64)  # any token id
        position[vocab] = torch.arange(len(vocab))
        self.position = position

    def inputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[rows].float(), self.embed[self.tokens[rows]].float()

    def targets(self, pairs_: Pairs, rows: torch.Tensor) -> torch.Tensor:
        """[len(rows), depth] positions of the labels in the head's vocabulary (-1: outside it)."""
        return self.position[torch.from_numpy(pairs_.labels)[rows]]

    def unroll(self, head: DraftHead, pairs_: Pairs, rows: torch.Tensor) -> list[torch.Tensor]:
        """Predicted states for steps 1..depth: each step starts from the previous step's
        prediction and the true token (what the head sees at run time when its guess was right)."""
        hidden, embedded = self.inputs(torch.from_numpy(pairs_.rows)[rows])
        states = [head(hidden, embedded)]
        ahead = torch.from_numpy(pairs_.ahead)[rows]
        for step in range(1, ahead.shape[1]):
            states.append(head(states[-1], self.embed[ahead[:, step - 1]]))
        return states


def accuracy(head: DraftHead, batches: _Batches, test: Pairs, k: int = 4) -> list[tuple[float, float]]:
    """Per step, top-1 and top-k accuracy of the head on ``test`` given the earlier tokens right
    (a token outside its vocabulary is a miss)."""
    depth = test.ahead.shape[1]
    top1, topk = [0] * depth, [0] * depth
    with torch.inference_mode():
        for start in range(0, len(test.rows), 4096):
            rows = torch.arange(start, min(start + 4096, len(test.rows)))
            target = batches.targets(test, rows)
            for step, state in enumerate(batches.unroll(head, test, rows)):
                guesses = (state @ batches.scores.T).topk(k, dim=-1).indices
                top1[step] += int((guesses[:, 0] == target[:, step]).sum())
                topk[step] += int((guesses == target[:, step, None]).any(-1).sum())
    n = max(1, len(test.rows))
    return [(round(a / n, 3), round(b / n, 3)) for a, b in zip(top1, topk)]


def pair_copies(kinds: np.ndarray, specs: list[str]) -> np.ndarray | None:
    """Per pair, how many times an epoch sees it, from ``KIND=N`` specs (other kinds once);
    None without specs.  Raises ValueError on a malformed spec or a kind no pair has."""
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


def epoch_rows(targets: torch.Tensor, copies: np.ndarray | None = None) -> torch.Tensor:
    """The pair indices one epoch goes through: every pair whose next token the head can
    propose (one outside its vocabulary teaches nothing), ``copies[i]`` times each.

    Repeating a kind of pair is how its weight is raised: the model's own generations are
    what the head meets at run time, and they are the scarce, expensive kind of data.
    """
    usable = torch.nonzero(targets[:, 0] >= 0).squeeze(1)
    if copies is None:
        return usable
    return usable.repeat_interleave(torch.as_tensor(copies, dtype=torch.int64)[usable])


def train_draft_head(data: Dataset, train: Pairs, embed: torch.Tensor, lm_head: torch.nn.Module, vocab_size: int = 16384,
                     width: int = 1024, epochs: int = 6, seed: int = 0, batch: int = 512, lr: float = 2e-3,
                     progress: Callable[[str], None] = lambda _m: None,
                     evaluate: Callable[[DraftHead, _Batches], str] | None = None,
                     compute_dtype: torch.dtype = torch.float32,
                     copies: np.ndarray | None = None) -> tuple[DraftHead, _Batches]:
    """Fit a head on the training pairs; ``embed`` is the model's input embedding matrix;
    ``copies`` (per pair, see ``epoch_rows``) weights some pairs more than others.

    The products run in ``compute_dtype`` under autocast while weights and optimizer state
    stay float32.  On this 2-core CPU (native bf16) bfloat16 steps took 320-334 ms against
    572-633 in float32 (batch 512, two unrolled steps, 16k-token vocabulary), and a 2-epoch
    comparison on 120k pairs gave the same held-out accuracy (README); the head runs in the
    model's dtype anyway.  The CLI picks it like the model's dtype (``engine.device``):
    bfloat16 emulated in software is slower than float32.
    """
    torch.manual_seed(seed)
    vocab = frequent_vocab(data, train, vocab_size)
    batches = _Batches(data, embed.float(), score_rows(lm_head, vocab, data.features.shape[1]).float(), vocab)
    head = DraftHead(data.features.shape[1], width, vocab)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    targets_all = batches.targets(train, torch.arange(len(train.rows)))
    usable = epoch_rows(targets_all, copies)
    if not len(usable):
        raise ValueError("no training pairs: the shards hold no positions with a next token")
    batch = min(batch, len(usable))
    steps = max(1, epochs * (len(usable) // batch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    rows_all = torch.from_numpy(train.rows)
    started = time.perf_counter()
    for epoch in range(epochs):  # epochs x (usable // batch) optimizer steps: the schedule's length
        order = usable[torch.randperm(len(usable))]
        for start in range(0, len(order) - batch + 1, batch):
            chosen = order[start : start + batch]
            loss = torch.zeros(())
            with torch.autocast("cpu", dtype=compute_dtype, enabled=compute_dtype != torch.float32):
                for ahead, predicted in enumerate(batches.unroll(head, train, chosen)):
                    logits = (predicted @ batches.scores.T).float()
                    loss = loss + torch.nn.functional.cross_entropy(logits, targets_all[chosen, ahead], ignore_index=-1)
                    true_state = batches.features[rows_all[chosen] + ahead + 1].float()
                    loss = loss + 0.1 * torch.nn.functional.smooth_l1_loss(predicted.float(), true_state)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        report = evaluate(head, batches) if evaluate is not None else ""
        progress(f"epoch {epoch + 1}/{epochs} ({len(usable)} pairs): loss {loss.item():.3f} {report} "
                 f"({time.perf_counter() - started:.0f}s)")
    return head.eval(), batches
