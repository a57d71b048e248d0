"""The learned draft head: its file, its training, and that drafting with it changes no output."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch

from lsp_server.drafthead.head import (
    DraftHead,
    DraftHeadInfo,
    find_draft_head,
    head_path_for,
    load_draft_head,
    save_draft_head,
    score_rows,
    unrolled_mask,
)
from lsp_server.drafthead.train import (
    accuracy,
    bigram_accuracy,
    epoch_windows,
    greedy_labels,
    heldout_parts,
    model_picks,
    pair_copies,
    pairs,
    train_draft_head,
    window_of,
    windows,
)
from lsp_server.engine.completer import build_drafter
from lsp_server.engine.decoding import Decoder
from lsp_server.engine.prompt import PromptBuilder
from lsp_server.engine.speculation.drafter import DrafterConfig
from lsp_server.engine.speculation.head_drafts import HeadNode, HeadProposer
from lsp_server.genguard.head import HeadError, model_key, tokenizer_hash
from lsp_server.genguard.train import Dataset


def _random_head(hidden: int, vocab: list[int], seed: int = 0, context: int = 8) -> DraftHead:
    torch.manual_seed(seed)
    return DraftHead(hidden, 32, torch.tensor(vocab), context).eval()


def _info(loaded, width: int = 32) -> DraftHeadInfo:
    return DraftHeadInfo(loaded.name, int(loaded.model.config.hidden_size), tokenizer_hash(loaded.tokenizer), width,
                         8, {"pairs": 1})


def test_round_trip_and_refusals(tmp_path, tiny_loaded):
    hidden = int(tiny_loaded.model.config.hidden_size)
    head = _random_head(hidden, [5, 7, 9])
    path = tmp_path / "head.safetensors"
    save_draft_head(path, head, _info(tiny_loaded))
    key = tokenizer_hash(tiny_loaded.tokenizer)
    loaded_head, info = load_draft_head(path, hidden, key)
    assert info.training == {"pairs": 1} and loaded_head.vocab.tolist() == [5, 7, 9]
    assert torch.equal(loaded_head.qkv.weight, head.qkv.weight.to(torch.bfloat16).float()) and loaded_head.context == 8
    with pytest.raises(HeadError, match="hidden size"):
        load_draft_head(path, hidden + 1, key)
    with pytest.raises(HeadError, match="tokenizer"):
        load_draft_head(path, hidden, "0" * 16)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HeadError, match="cannot read"):
        load_draft_head(tmp_path / "junk.safetensors", hidden, key)


def test_heads_live_in_the_cache_dir_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SWIFTGUARD_CACHE_DIR", str(tmp_path))
    assert head_path_for("Qwen/Qwen2.5-Coder-0.5B-Instruct") == \
        tmp_path / "drafthead" / "qwen2.5-coder-0.5b-instruct.safetensors"


def test_lookup_by_model_name_says_why_not(tmp_path, tiny_loaded):
    hidden = int(tiny_loaded.model.config.hidden_size)
    head, status = find_draft_head(tiny_loaded.name, hidden, tiny_loaded.tokenizer, tmp_path)
    assert head is None and "no draft head" in status
    save_draft_head(tmp_path / f"{model_key(tiny_loaded.name)}.safetensors", _random_head(hidden, [3]),
                    _info(tiny_loaded))
    head, status = find_draft_head(tiny_loaded.name, hidden, tiny_loaded.tokenizer, tmp_path)
    assert head is not None and "1 tokens" in status
    head, status = find_draft_head(tiny_loaded.name, hidden + 8, tiny_loaded.tokenizer, tmp_path)
    assert head is None and "refusing" in status


def test_score_rows_are_the_lm_head_weights_exactly(tiny_loaded):
    lm_head = tiny_loaded.model.get_output_embeddings()
    vocab = torch.tensor([0, 17, 5, 255])
    hidden = int(tiny_loaded.model.config.hidden_size)
    plain = torch.nn.Linear(hidden, lm_head.out_features, bias=False)
    assert torch.equal(score_rows(plain, vocab, hidden), plain.weight[vocab])
    # The loaded model's head may be packed (no plain weight left): its products must agree.
    rows = score_rows(lm_head, vocab, hidden)
    states = torch.randn(3, hidden, dtype=rows.dtype)
    assert torch.allclose(states @ rows.T, lm_head(states)[:, vocab], atol=1e-5)


def _synthetic(n_samples: int = 60, length: int = 40, hidden: int = 16, seed: int = 0) -> Dataset:
    """Token after each position: 3 if the hidden state's first feature is positive, else 4.

    A table keyed by the current token cannot know which (it is always 1 or 2 at random);
    a head that reads the hidden state can.
    """
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n_samples * length, hidden)).astype(np.float16)
    tokens = rng.integers(1, 3, n_samples * length).astype(np.int32)
    index = np.repeat(np.arange(n_samples), length).astype(np.int32)
    follows = np.where(features[:, 0] > 0, 3, 4)
    tokens[1:] = np.where(index[1:] == index[:-1], follows[:-1], tokens[1:])
    repos = np.array([f"r{i % 6}" for i in range(n_samples)])
    return Dataset(features, np.zeros(len(tokens), np.uint8), tokens, index, np.array(["python"] * n_samples), repos,
                   np.array(["generated"] * n_samples), [{}])


def test_pairs_feed_the_text_and_label_the_models_pick():
    """Inputs when unrolled are the tokens really fed; what the head should guess is the model's own pick."""
    data = _synthetic(n_samples=3, length=6)
    picks = data.token_ids.astype(np.int64) + 10
    pairs_ = pairs(data, np.array([True, False, True]), picks, depth=2)
    assert set(data.sample_index[pairs_.rows]) == {0, 2} and len(pairs_.rows) == 2 * 4
    assert np.array_equal(pairs_.ahead, np.stack([data.token_ids[pairs_.rows + 1], data.token_ids[pairs_.rows + 2]], 1))
    assert np.array_equal(pairs_.labels, np.stack([picks[pairs_.rows + 1], picks[pairs_.rows + 2]], 1))
    assert np.array_equal(pairs_.next_tokens, picks[pairs_.rows + 1])


def test_heldout_generations_are_split_where_the_function_ends():
    """A generated pair counts as after the end when the token it guesses carries GenGuard's stop label."""
    data = _synthetic(n_samples=3, length=6)
    data.kind = np.array(["generated", "file", "generated"])
    data.labels[:6] = [0, 0, 0, 1, 1, 1]  # sample 0 ends its function after its third token
    data.labels[12:] = 0  # sample 2 never reaches the end
    parts = heldout_parts(data, pairs(data, np.ones(3, bool), data.token_ids))
    assert parts["generated"].rows.tolist() == [0, 1, 12, 13, 14, 15, 16]
    assert parts["generated_after_end"].rows.tolist() == [2, 3, 4]
    assert parts["file"].rows.tolist() == [6, 7, 8, 9, 10]


def test_greedy_labels_are_the_lm_heads_argmax_over_every_chunk():
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(16, 300, bias=False)
    features = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float16)
    expected = lm_head(torch.from_numpy(features).float()).argmax(-1).numpy()
    assert np.array_equal(greedy_labels(features, lm_head, chunk=128), expected)
    assert greedy_labels(features[:0], lm_head).shape == (0,)


def test_stored_picks_are_used_and_missing_ones_computed():
    data = _synthetic(n_samples=2, length=5)
    lm_head = torch.nn.Linear(16, 8, bias=False)
    computed = greedy_labels(data.features, lm_head)
    data.picks = np.where(np.arange(len(data.token_ids)) % 2 == 0, 7, -1).astype(np.int32)
    labels = model_picks(data, lm_head)
    assert np.array_equal(labels[::2], np.full(len(labels[::2]), 7)) and np.array_equal(labels[1::2], computed[1::2])
    data.picks = None  # a dataset without stored picks: every row from the LM head
    assert np.array_equal(model_picks(data, lm_head), computed)


def test_repeat_weights_a_kind_of_window_and_drops_windows_with_nothing_to_guess():
    kinds = np.array(["file", "generated", "file", "generated", "teacher"])
    copies = pair_copies(kinds, ["generated=3"])
    assert copies.tolist() == [1, 3, 1, 3, 1] and pair_copies(kinds, []) is None
    usable = np.array([True, True, False, True, True])  # window 2's next tokens are all outside the vocabulary
    assert epoch_windows(usable).tolist() == [0, 1, 3, 4]
    assert epoch_windows(usable, copies).tolist() == [0, 1, 1, 1, 3, 3, 3, 4]
    for bad in (["generated"], ["generated=0"], ["generated=x"], ["genrated=2"]):
        with pytest.raises(ValueError):
            pair_copies(kinds, bad)


@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float32])
def test_training_learns_what_the_hidden_state_says(compute_dtype):
    data = _synthetic()
    train_mask = np.array([repo not in ("r0", "r1") for repo in data.repo])
    train, test = pairs(data, train_mask, data.token_ids), pairs(data, ~train_mask, data.token_ids)
    assert set(data.sample_index[train.rows]).isdisjoint(data.sample_index[test.rows])
    embed = torch.randn(8, 16)
    lm_head = torch.nn.Linear(16, 8, bias=False)
    produced: set[torch.dtype] = set()
    heard: list[str] = []

    def record(module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Linear) and output.requires_grad:  # the head's layers as they train
            produced.add(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        head, batches, _steps, _planned = train_draft_head(
            data, train, data.token_ids.astype(np.int64), embed, lm_head, vocab_size=4, width=32, epochs=8,
            batch=64, lr=1e-2, compute_dtype=compute_dtype, context=8, progress=heard.append, report_every=0.0)
    finally:
        hook.remove()
    assert produced == {compute_dtype}
    steps = [line for line in heard if ": step " in line]  # reported within epochs, not only after them
    assert steps and steps[-1].startswith("epoch 8/8: step ") and "s to go)" in steps[-1]
    assert sum(line.startswith("epoch ") and "loss" in line and ": step " not in line for line in heard) == 8
    assert {p.dtype for p in head.parameters()} == {torch.float32}
    assert {3, 4} <= set(head.vocab.tolist())  # the next tokens seen in training
    [(top1, _)] = accuracy(head, batches, data, test, 8)
    bigram_top1, _ = bigram_accuracy(data, train, test)
    assert top1 > 0.9 and bigram_top1 < 0.7


def test_a_time_budget_ends_training_early_and_says_so():
    data = _synthetic()
    train = pairs(data, np.ones(len(data.repo), bool), data.token_ids)
    heard: list[str] = []
    run = functools.partial(train_draft_head, data, train, data.token_ids.astype(np.int64), torch.randn(8, 16),
                            torch.nn.Linear(16, 8, bias=False), vocab_size=4, width=32, epochs=8, batch=64,
                            context=8, progress=heard.append)
    whole = run()
    assert whole.steps == whole.planned > 1 and not any("time budget" in line for line in heard)
    cut = run(time_budget=0.0)  # spent before the first step: one step, then a report
    assert (cut.steps, cut.planned) == (1, whole.planned)
    assert heard[-1] == f"time budget reached after 1 of {whole.planned} steps"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drafting_with_a_head_changes_no_output(tiny_loaded, seed):
    """Lossless whatever the head guesses: a random head's drafts are verified like any other."""
    hidden = int(tiny_loaded.model.config.hidden_size)
    prompts = PromptBuilder(tiny_loaded.tokenizer)
    decoder = Decoder(tiny_loaded.model, tiny_loaded.tokenizer, prompts.stop_ids, reuse_kv=False)
    vocab = list(range(0, int(tiny_loaded.model.config.vocab_size), 7))
    drafter = build_drafter(tiny_loaded, decoder, prompts, DrafterConfig(fixed_nodes=8))
    drafter.head = HeadProposer(_random_head(hidden, vocab, seed), tiny_loaded.model.get_input_embeddings(),
                                tiny_loaded.model.get_output_embeddings())
    prompt = prompts.build(f"def f{seed}(x):\n    return x + ", "\n", 256).ids
    plain = decoder.generate(prompt, 24)
    spec = decoder.generate(prompt, 24, drafter=drafter)
    assert spec.token_ids == plain.token_ids
    stats = drafter.stats.as_json()
    assert stats["proposed_by_source"]["head"] > 0 and "head" in stats["first_token_hit_rate"]


class _Successors:
    """A stand-in head that knows which token followed each token in plain greedy output."""

    name = "head"

    def __init__(self, output: list[int]) -> None:
        self.next_of = dict(itertools.pairwise(output))
        self.asked: list[int] = []

    def begin(self, prompt) -> None:
        self.last: int | None = None

    def extend(self, states, tokens, start=None) -> None:
        assert len(states) == len(tokens)
        self.last = tokens[-1]

    def tree(self):
        if self.last is None:
            return []
        self.asked.append(self.last)
        return [HeadNode((self.next_of.get(self.last, 0),), 0.9, 0.9), HeadNode((1,), 0.05, 0.05)]


def test_head_guesses_follow_the_pending_token_and_are_accepted(tiny_loaded):
    prompts = PromptBuilder(tiny_loaded.tokenizer)
    decoder = Decoder(tiny_loaded.model, tiny_loaded.tokenizer, prompts.stop_ids, reuse_kv=False)
    prompt = prompts.build("def g(y):\n    return y * ", "\n", 256).ids
    plain = decoder.generate(prompt, 32)
    drafter = build_drafter(tiny_loaded, decoder, prompts, DrafterConfig(fixed_nodes=4, use_cache=False))
    drafter.head = _Successors(plain.token_ids)
    spec = decoder.generate(prompt, 32, drafter=drafter)
    assert spec.token_ids == plain.token_ids
    assert drafter.head.asked and set(drafter.head.asked) <= set(plain.token_ids)  # always the model's own token
    assert drafter.stats.accepted_by_source["head"] > 0 and spec.forward_passes < len(plain.token_ids)


def test_head_tree_levels_expand_the_likeliest_guesses(tiny_loaded):
    hidden = int(tiny_loaded.model.config.hidden_size)
    vocab = list(range(0, int(tiny_loaded.model.config.vocab_size), 3))
    proposer = HeadProposer(_random_head(hidden, vocab), tiny_loaded.model.get_input_embeddings(),
                            tiny_loaded.model.get_output_embeddings())
    proposer.extend(torch.randn(3, hidden), [5, 8, 11])
    nodes = proposer.tree()
    # The default tree: 4 first guesses, then 2 children for each of the 2 likeliest nodes,
    # three levels deep, as many as training unrolls the head by default (DRAFT_LEVELS).
    assert [len(node.path) for node in nodes] == [1] * 4 + [2] * 4 + [3] * 4
    joint = {node.path: node.joint for node in nodes}
    for node in nodes:
        assert set(node.path) <= set(vocab)
        assert node.joint == pytest.approx(joint.get(node.path[:-1], 1.0) * node.conditional)
    level_one = sorted((node for node in nodes if len(node.path) == 1), key=lambda node: -node.joint)
    assert {node.path[:-1] for node in nodes if len(node.path) == 2} == {node.path for node in level_one[:2]}


def test_explicit_masses_rank_a_sources_own_tree():
    from lsp_server.engine.speculation.draft_tree import Draft, build_tree

    drafts = [Draft((1,), 0, "head", masses=(0.6,)), Draft((1, 2), 0, "head", masses=(0.0, 0.5)),
              Draft((1, 3), 0, "head", masses=(0.0, 0.05)), Draft((4,), 0, "head", masses=(0.2,))]
    tree = build_tree(drafts, max_nodes=3)
    assert tree.tokens == [1, 2, 4] and tree.probabilities == pytest.approx([0.6, 0.5, 0.2])


def test_guesses_below_the_first_level_come_from_the_most_frequent_tokens(tiny_loaded, monkeypatch):
    from lsp_server.engine.speculation import head_drafts

    monkeypatch.setattr(head_drafts, "DEEP_VOCAB", 20)
    hidden = int(tiny_loaded.model.config.hidden_size)
    vocab = list(range(0, int(tiny_loaded.model.config.vocab_size), 3))  # most frequent first, as trained
    proposer = HeadProposer(_random_head(hidden, vocab, seed=3), tiny_loaded.model.get_input_embeddings(),
                            tiny_loaded.model.get_output_embeddings())
    for seed in range(5):
        torch.manual_seed(seed)
        proposer.begin([3, 11])
        proposer.extend(torch.randn(1, hidden), [11], 1)
        nodes = proposer.tree()
        assert all(node.path[-1] in vocab[:20] for node in nodes if len(node.path) > 1)
        assert all(node.path[-1] in vocab for node in nodes)


def test_windows_cover_each_sample_and_hold_every_chain_whole():
    """Windows never cross samples; with an overlap of depth - 1 the window a row falls in holds its chain."""
    index = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2], np.int32)
    data = Dataset(np.zeros((10, 4), np.float16), np.zeros(10, np.uint8), np.zeros(10, np.int32), index,
                   np.array(["python"] * 3), np.array(["r"] * 3), np.array(["file"] * 3), [{}])
    spans = windows(data, np.array([True, True, False]), 3, overlap=1)
    assert spans.starts.tolist() == [0, 2, 4, 5, 7] and spans.lengths.tolist() == [3, 3, 1, 3, 1]
    assert window_of(spans, np.array([0, 1, 2, 3, 5, 6])).tolist() == [0, 0, 1, 1, 3, 3]
    assert windows(data, np.array([False, False, True]), 8).starts.tolist() == [8]


def test_unrolled_mask_shows_a_guess_the_true_past_and_its_own_path():
    """Step k at position i sees the true positions up to i - k + 1 and the guesses before it on its path."""
    assert unrolled_mask(4, 2).int().tolist() == [
        [0, 0, 0, 0, 1, 0, 0, 0],
        [1, 0, 0, 0, 0, 1, 0, 0],
        [1, 1, 0, 0, 0, 0, 1, 0],
        [1, 1, 1, 0, 0, 0, 0, 1],
    ]
    third = unrolled_mask(4, 3).int()
    assert third[3].tolist() == [1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]  # true 0..1, step 2's guess at 2, itself


@pytest.mark.parametrize("context", [0, 4])
def test_drafting_reads_the_context_as_training_does(tiny_loaded, context):
    """The proposer, fed positions a few at a time and keeping only the last ``context``, guesses
    what the training form computes on the same window, on the first level and the second."""
    from lsp_server.drafthead.train import _Batches
    from lsp_server.genguard.train import Dataset

    hidden = int(tiny_loaded.model.config.hidden_size)
    vocab = list(range(0, int(tiny_loaded.model.config.vocab_size), 5))
    length = 7
    head = _random_head(hidden, vocab, seed=5, context=context)
    embedding, lm_head = tiny_loaded.model.get_input_embeddings(), tiny_loaded.model.get_output_embeddings()
    proposer = HeadProposer(head, embedding, lm_head, int8=False)
    torch.manual_seed(1)
    states = torch.randn(length, hidden).half().float()  # what a shard stores
    tokens = torch.randint(0, int(tiny_loaded.model.config.vocab_size), (length,)).tolist()
    for start, end in ((0, 2), (2, 5), (5, 6)):
        proposer.extend(states[start:end], tokens[start:end])
    nodes = proposer.tree()
    first = [node for node in nodes if len(node.path) == 1]
    guess = max(first, key=lambda node: node.conditional).path[0]
    # The training form on the last ``context`` positions, the guess fed after the last one read.
    rows = list(range(length - 1 - max(context, 1), length))
    window = tokens[:length - 1] + [guess]
    data = Dataset(states.numpy().astype(np.float16), np.zeros(length, np.uint8), np.array(window, np.int32),
                   np.zeros(length, np.int32), np.array(["python"]), np.array(["r"]), np.array(["file"]), [{}])
    scores = score_rows(lm_head, head.vocab, hidden)
    batches = _Batches(data, np.array(window), embedding.weight.detach(), scores, head.vocab)
    with torch.inference_mode():
        step_one, step_two = batches.unroll(head, torch.tensor([rows]), 2)

    def best(state: torch.Tensor, k: int) -> list[float]:
        return torch.softmax(state @ scores.T, -1).topk(k).values.tolist()

    assert sorted((n.conditional for n in first), reverse=True) == pytest.approx(best(step_one[0, -2], 4), abs=1e-5)
    below = sorted((n.conditional for n in nodes if n.path[:1] == (guess,) and len(n.path) == 2), reverse=True)
    assert below == pytest.approx(best(step_two[0, -1], 2), abs=1e-5)


def _prefix_states(table: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Stand-in model states: row t depends on the tokens up to t alone, as a causal model's do."""
    return table[tokens].cumsum(0) / torch.arange(1, len(tokens) + 1)[:, None]


def _read_fresh(proposer: HeadProposer, table: torch.Tensor, prompt: list[int]) -> None:
    """What a request with nothing reused reads: the prompt's pass feeds every prompt token."""
    proposer.reset()
    proposer.begin(prompt)
    proposer.extend(_prefix_states(table, prompt)[:-1], prompt[1:], 1)


def _levels(nodes: list[HeadNode]) -> list[list[float]]:
    return [sorted(node.conditional for node in nodes if len(node.path) == depth) for depth in (1, 2, 3)]


@pytest.mark.parametrize(("edit_at", "typed"), [(15, [6, 1, 2]), (22, [6, 1, 2]), (22, [])])
def test_a_new_request_keeps_what_the_head_read_of_the_prefix_it_shares(tiny_loaded, edit_at, typed):
    """Typing reuses the model's cache of the unchanged prefix and feeds only what follows it; the
    head reads as much as if it had read the new prompt from the start.  Accepting part of the
    last request's output lets the head draft on the prompt's own pass."""
    hidden = int(tiny_loaded.model.config.hidden_size)
    vocab_size = int(tiny_loaded.model.config.vocab_size)
    vocab = list(range(0, vocab_size, 5))
    embedding, lm_head = tiny_loaded.model.get_input_embeddings(), tiny_loaded.model.get_output_embeddings()
    proposer = HeadProposer(_random_head(hidden, vocab, seed=7, context=8), embedding, lm_head)
    torch.manual_seed(2)
    table = torch.randn(vocab_size, hidden)
    first = torch.randint(0, vocab_size, (20,)).tolist()
    _read_fresh(proposer, table, first)
    generated = [4, 9, 13]  # the first pass's accepted tokens, then more passes' tokens
    states = _prefix_states(table, first + generated)
    proposer.extend(states[19:22], generated, 20)
    assert proposer.held == 16  # twice the context
    second = (first + generated)[:edit_at] + typed  # typed: nothing when accepting part of the output
    reused = min(edit_at, len(second) - 1)  # what the model's cache keeps (kv_reuse)
    proposer.begin(second)
    # The head drafts on the prompt's pass exactly when it has read the prompt's last position.
    assert bool(proposer.tree()) == (len(second) - reused == 1)
    proposer.extend(_prefix_states(table, second)[reused:-1], second[reused + 1:], reused + 1)
    fresh = HeadProposer(proposer.head, embedding, lm_head)
    _read_fresh(fresh, table, second)
    assert proposer.held >= 8 and fresh.held >= 8
    kept, read = proposer.tree(), fresh.tree()
    assert [node.path for node in kept] == [node.path for node in read]
    for ours, theirs in zip(_levels(kept), _levels(read)):
        assert ours == pytest.approx(theirs, abs=1e-5)


def test_positions_never_read_are_not_taken_for_the_prompts(tiny_loaded):
    """A read that skips positions forgets what it had: their tokens are unknown."""
    hidden = int(tiny_loaded.model.config.hidden_size)
    vocab = list(range(0, int(tiny_loaded.model.config.vocab_size), 5))
    proposer = HeadProposer(_random_head(hidden, vocab, context=8), tiny_loaded.model.get_input_embeddings(),
                            tiny_loaded.model.get_output_embeddings())
    proposer.begin([1, 2, 3])
    proposer.extend(torch.randn(2, hidden), [2, 3], 1)
    proposer.extend(torch.randn(2, hidden), [8, 9], 6)
    assert proposer.held == 2 and proposer.tree()
    proposer.begin([1, 2, 3, 5, 5, 5, 8, 9, 10])
    assert proposer.held == 0 and not proposer.tree()


def test_typing_into_the_last_completion_keeps_the_heads_context(tiny_loaded):
    """In the editor: the user types into what was just completed; the model reuses its cache of
    the unchanged prefix and the head keeps its reading of it, and the output is still greedy's."""
    hidden = int(tiny_loaded.model.config.hidden_size)
    prompts = PromptBuilder(tiny_loaded.tokenizer)
    decoder = Decoder(tiny_loaded.model, tiny_loaded.tokenizer, prompts.stop_ids, reuse_kv=True)
    plain = Decoder(tiny_loaded.model, tiny_loaded.tokenizer, prompts.stop_ids, reuse_kv=False)
    vocab = list(range(0, int(tiny_loaded.model.config.vocab_size), 7))
    nodes = 8
    drafter = build_drafter(tiny_loaded, decoder, prompts, DrafterConfig(fixed_nodes=nodes))
    drafter.head = HeadProposer(_random_head(hidden, vocab, seed=4, context=64),
                                tiny_loaded.model.get_input_embeddings(), tiny_loaded.model.get_output_embeddings())
    before = "import os\n\ndef total(values):\n    result = 0\n    for value in values:\n        result += "
    first = decoder.generate(prompts.build(before, "", 256).ids, 8, drafter=drafter)
    prompt = prompts.build(before + first.text[:3] + "1", "", 256).ids
    second = decoder.generate(prompt, 3, drafter=drafter)
    assert second.token_ids == plain.generate(prompt, 3).token_ids
    # Fed again, and read after the prompt (at most a tree's worth past the budget): fewer than the prompt.
    fed = len(prompt) - second.reused_prompt_tokens
    assert second.reused_prompt_tokens > 0 and fed + 3 + nodes < len(prompt) - 1
    assert drafter.head.held >= len(prompt) - 1  # every prompt position, as reading it fresh would


class _Reader:
    """A stand-in head that records which token it was told stands at each position."""

    name = "head"

    def begin(self, prompt) -> None:
        self.read: dict[int, int] = dict(enumerate(prompt))  # a fresh head is told the prompt's tokens

    def extend(self, states, tokens, start=None) -> None:
        assert len(states) == len(tokens) and start is not None
        self.read.update(enumerate(tokens, start))

    def tree(self):
        return []


def test_the_head_reads_a_fim_prompt_as_the_file_reads(tiny_loaded):
    """The text before the cursor, then the output: not the suffix and sentinels between them,
    which a long suffix would otherwise make the whole of the head's context."""
    prompts = PromptBuilder(tiny_loaded.tokenizer)
    decoder = Decoder(tiny_loaded.model, tiny_loaded.tokenizer, prompts.stop_ids, reuse_kv=False)
    drafter = build_drafter(tiny_loaded, decoder, prompts, DrafterConfig(fixed_nodes=4))
    drafter.head = _Reader()
    prompt = prompts.build("def area(width, height):\n    return ", "\n\nprint(area(2, 3))\n", 256).ids
    out = decoder.generate(prompt, 12, drafter=drafter)
    before, after = prompts.split(prompt)
    assert after and len(out.token_ids) > 2
    read = [drafter.head.read[position] for position in range(len(drafter.head.read))]
    assert read == [prompt[0], *before, *out.token_ids[:len(read) - 1 - len(before)]]
    assert len(read) >= len(before) + len(out.token_ids)


def test_accepting_part_of_a_fim_completion_lets_the_head_draft_on_the_prompts_pass(tiny_loaded):
    """The next prompt's text before the cursor is the last one's plus output the head has read."""
    hidden = int(tiny_loaded.model.config.hidden_size)
    prompts = PromptBuilder(tiny_loaded.tokenizer)
    decoder = Decoder(tiny_loaded.model, tiny_loaded.tokenizer, prompts.stop_ids, reuse_kv=True)
    drafter = build_drafter(tiny_loaded, decoder, prompts, DrafterConfig(fixed_nodes=4))
    vocab = list(range(0, int(tiny_loaded.model.config.vocab_size), 7))
    drafter.head = HeadProposer(_random_head(hidden, vocab, seed=3, context=16),
                                tiny_loaded.model.get_input_embeddings(), tiny_loaded.model.get_output_embeddings())
    prompt = prompts.build("def area(width, height):\n    return ", "\n\nprint(area(2, 3))\n", 256).ids
    out = decoder.generate(prompt, 8, drafter=drafter)
    before, after = prompts.split(prompt)
    pre, suf, mid = prompts.fim_ids
    drafter.begin([pre, *before, *out.token_ids[:3], suf, *after, mid])
    assert drafter.head.tree()


def test_int8_weights_keep_the_heads_guesses(tiny_loaded):
    """The head's int8 weights (the default on a CPU) change its probabilities a little and its
    ranking of guesses hardly at all; the head it was given is left as it was."""
    hidden = int(tiny_loaded.model.config.hidden_size)
    vocab = list(range(0, int(tiny_loaded.model.config.vocab_size), 3))
    embedding, lm_head = tiny_loaded.model.get_input_embeddings(), tiny_loaded.model.get_output_embeddings()
    head = _random_head(hidden, vocab, seed=9, context=8)
    exact = HeadProposer(head, embedding, lm_head, int8=False)
    small = HeadProposer(head, embedding, lm_head)
    assert type(head.up) is torch.nn.Linear and type(small.head.up).__name__ == "Int8Linear"
    agree = 0
    for seed in range(20):
        torch.manual_seed(seed)
        states, tokens = torch.randn(6, hidden), torch.randint(0, len(vocab), (6,)).tolist()
        for proposer in (exact, small):
            proposer.begin([0] + tokens)
            proposer.extend(states, tokens, 1)
        ours, theirs = small.tree(), exact.tree()
        agree += ours[0].path == theirs[0].path
        assert ours[0].conditional == pytest.approx(theirs[0].conditional, abs=0.05)
    assert agree >= 18
