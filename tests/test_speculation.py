"""Tree speculation is lossless: differential tests against plain greedy decoding (fp32, and bit
for bit in bf16 on a CPU)."""

from __future__ import annotations

import random
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

from conftest import assert_same_cache
from lsp_server.engine.decoding import Decoder
from lsp_server.engine.greedy import greedy_tokens
from lsp_server.engine.prompt import PromptBuilder
from lsp_server.engine.speculation.draft_tree import Draft, DraftTree, build_tree
from lsp_server.engine.speculation.verify import tree_attention_mask, tree_position_ids
from lsp_server.stop_rule import StopDecision


def _decoder(loaded, reuse_kv=False) -> Decoder:
    return Decoder(loaded.model, loaded.tokenizer, PromptBuilder(loaded.tokenizer).stop_ids, reuse_kv=reuse_kv)


def _prompt(loaded, prefix: str) -> list[int]:
    return PromptBuilder(loaded.tokenizer).build(prefix, "\n", 512).ids


class ScriptedDrafter:
    """Drafts from a known continuation: right, wrong, partly right or long, as told."""

    def __init__(self, reference: list[int], mode: str, vocab: int, seed: int = 0) -> None:
        self.reference, self.mode, self.vocab = reference, mode, vocab
        self.random = random.Random(seed)
        self.feedback: list[tuple[int, int]] = []

    def begin(self, prompt, language=None):
        pass

    def draft(self, tokens, cache=None, pending=()):
        truth = self.reference[len(tokens) :]
        noise = [self.random.randrange(self.vocab) for _ in range(6)]
        drafts = {
            "right": [Draft(tuple(truth[:6]), 3.0, "truth")],
            "wrong": [Draft(tuple(noise), 1.0, "noise")],
            "partly": [Draft(tuple(truth[:2] + noise[:4]), 2.0, "truth"), Draft(tuple(noise[::-1]), 1.0, "noise")],
            "long": [Draft(tuple(truth + noise * 10), 1.0, "truth")],
            "empty": [],
        }[self.mode]
        return build_tree(drafts, max_nodes=12)

    def observe(self, tokens, tree, verified, seconds):
        assert len(verified.logits) == len(verified.accepted)
        self.feedback.append((len(tree), len(verified.path)))

    def finish(self, prompt, generated):
        self.finished = list(generated)


def test_hand_built_tree_mask_and_positions():
    # root -> a(0) -> b(1); root -> c(2) -> d(3)
    tree = DraftTree(tokens=[10, 11, 12, 13], parents=[-1, 0, -1, 2], depths=[1, 2, 1, 2],
                     probabilities=[0.5, 0.4, 0.3, 0.2], sources=[frozenset()] * 4)
    assert tree_position_ids(past=5, pending=2, tree=tree) == [5, 6, 7, 8, 7, 8]
    allowed = tree_attention_mask(past=5, pending=2, tree=tree, dtype=torch.float32)[0, 0] == 0
    assert allowed.shape == (6, 11)
    assert allowed[:, :5].all()                        # everyone sees the cache
    assert allowed[0, 5] and not allowed[0, 6]         # pending tokens are causal
    assert allowed[2:, 5:7].all()                      # nodes see all pending tokens
    assert allowed[3, 7] and allowed[3, 8] and not allowed[3, 9]   # b sees a and itself, not c
    assert allowed[5, 9] and allowed[5, 10] and not allowed[5, 7]  # d sees c, not a
    assert tree.path_to(3) == [2, 3]


def test_build_tree_keeps_the_most_probable_nodes_parents_first():
    drafts = [Draft((1, 2, 3), 0.5, "a"), Draft((1, 2, 4), 0.1, "b"), Draft((7,), 0.2, "c"),
              Draft((1, 9, 9, 9), 0.05, "a")]
    tree = build_tree(drafts, max_nodes=4)
    assert len(tree) == 4
    for index, parent in enumerate(tree.parents):
        assert parent < index
        if parent != -1:
            assert tree.probabilities[index] <= tree.probabilities[parent]
            assert tree.depths[index] == tree.depths[parent] + 1
    assert tree.tokens[:2] == [1, 2]
    assert tree.sources[0] == frozenset({"a", "b"})
    assert len(build_tree([], 8)) == 0 and len(build_tree(drafts, 0)) == 0


def _check_lossless(loaded, prefix: str, mode: str, max_new_tokens: int = 24, seed: int = 0):
    prompt = _prompt(loaded, prefix)
    plain = _decoder(loaded).generate(prompt, max_new_tokens)
    drafter = ScriptedDrafter(prompt + plain.token_ids, mode, loaded.model.config.vocab_size, seed)
    fast = _decoder(loaded).generate(prompt, max_new_tokens, drafter=drafter)
    assert fast.token_ids == plain.token_ids
    assert sum(fast.accepted_per_pass) == len(fast.token_ids)
    return plain, fast, drafter


def test_right_drafts_are_accepted_and_save_passes(tiny_loaded):
    plain, fast, drafter = _check_lossless(tiny_loaded, "def area(r):\n    return ", "right")
    assert fast.forward_passes < plain.forward_passes / 3
    assert max(path for _, path in drafter.feedback) >= 5
    assert drafter.feedback[0][1] == 6  # the prompt's own pass verifies a tree too


def test_wrong_partly_right_empty_and_overlong_drafts_change_nothing(tiny_loaded):
    for mode in ("wrong", "partly", "empty", "long"):
        _check_lossless(tiny_loaded, "class Point:\n    def __init__(self, x):\n        ", mode, max_new_tokens=17)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=80),
    mode=st.sampled_from(["right", "wrong", "partly", "long"]),
    budget=st.integers(min_value=1, max_value=20),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_speculation_equals_greedy_on_random_prompts(tiny_loaded, prefix, mode, budget, seed):
    _check_lossless(tiny_loaded, prefix, mode, max_new_tokens=budget, seed=seed)


class HiddenRecorder:
    """A stop rule that never stops and keeps every token's hidden state."""

    def __init__(self):
        self.hidden = []

    def begin(self, prefix, suffix):
        self.hidden = []

    def step(self, text, accepted, hidden):
        self.hidden.extend(hidden[: len(accepted)].clone())


@pytest.mark.parametrize("lines", [2, 60])
def test_bf16_speculation_gives_every_token_the_bits_of_plain_decoding(tiny_loaded_bf16, lines):
    """Branchy trees in bf16, with prompts that give the attention a cache part (over 128
    positions) and trees that reach the next block (~445 prompt tokens + 80 cross 512):
    the same tokens and the same hidden states, bit for bit, as plain decoding
    (``engine.attention``, ``engine.linear``; with transformers' SDPA and plain linear
    layers this fails within the first 15 tokens)."""
    prefix = "".join(f"value_{n} = compute(value_{n - 1}, {n})\n" for n in range(lines))
    prompt = _prompt(tiny_loaded_bf16, prefix)
    plain_rule, fast_rule = HiddenRecorder(), HiddenRecorder()
    plain = _decoder(tiny_loaded_bf16).generate(prompt, 80, stop_rule=plain_rule)
    drafter = ScriptedDrafter(prompt + plain.token_ids, "partly", tiny_loaded_bf16.model.config.vocab_size, lines)
    fast = _decoder(tiny_loaded_bf16).generate(prompt, 80, stop_rule=fast_rule, drafter=drafter)
    assert fast.token_ids == plain.token_ids
    assert fast.forward_passes < plain.forward_passes
    assert drafter.feedback[0][0] > 0  # a tree on the prompt's pass (over 256 tokens: ``attention.PROMPT_SPLIT``)
    assert len(fast_rule.hidden) == len(plain_rule.hidden) == 80
    for index, (ours, theirs) in enumerate(zip(fast_rule.hidden, plain_rule.hidden)):
        assert torch.equal(ours, theirs), f"hidden state of token {index} after {len(prompt)} prompt tokens"


def test_kv_cache_after_acceptance_equals_sequential_cache(tiny_loaded):
    prompt = _prompt(tiny_loaded, "for item in items:\n    ")
    plain = _decoder(tiny_loaded).generate(prompt, 20)
    decoder = _decoder(tiny_loaded, reuse_kv=True)
    decoder.generate(prompt, 20, drafter=ScriptedDrafter(prompt + plain.token_ids, "partly", 500))
    kept_ids, kept = decoder.kv._ids, decoder.kv._cache
    assert kept_ids == (prompt + plain.token_ids)[: len(kept_ids)]
    scratch = DynamicCache()
    decoder.hidden_states(kept_ids, scratch)
    assert_same_cache(kept, scratch)


def test_cancel_mid_speculation(tiny_loaded):
    prompt = _prompt(tiny_loaded, "x = ")
    plain = _decoder(tiny_loaded).generate(prompt, 60)
    cancel = threading.Event()
    drafter = ScriptedDrafter(prompt + plain.token_ids, "right", 500)

    class CancelAtTheTenthToken:
        """Cancels while judging the tenth token, in the middle of a pass's accepted tokens."""
        tokens = 0
        passes_then: int | None = None

        def step(self, text, accepted, hidden):
            self.tokens += 1
            if self.tokens == 10:
                cancel.set()
                self.passes_then = len(drafter.feedback)

    rule = CancelAtTheTenthToken()
    out = _decoder(tiny_loaded).generate(prompt, 60, rule, cancel, drafter=drafter)
    assert out.stop_reason == "cancelled" and rule.passes_then == out.forward_passes > 1  # no pass after it
    assert out.token_ids == plain.token_ids[: len(out.token_ids)]


def test_a_stop_inside_a_speculative_pass_ends_at_the_same_token_as_plain_decoding(tiny_loaded):
    """Right drafts accept many tokens per pass; a rule that stops at the 7th token must
    still see the tokens one by one, with their own hidden states, and cut there."""

    class StopAtSeventh:
        def __init__(self):
            self.seen = []

        def step(self, text, accepted, hidden):
            self.seen.append((list(accepted), hidden.clone()))
            return StopDecision(keep_chars=len(text), reason="test") if len(self.seen) == 7 else None

    prompt = _prompt(tiny_loaded, "total = 0\nfor item in items:\n    ")
    plain_rule, fast_rule = StopAtSeventh(), StopAtSeventh()
    plain = _decoder(tiny_loaded).generate(prompt, 24, plain_rule)
    reference = _decoder(tiny_loaded).generate(prompt, 24)
    drafter = ScriptedDrafter(prompt + reference.token_ids, "right", tiny_loaded.model.config.vocab_size)
    fast = _decoder(tiny_loaded).generate(prompt, 24, fast_rule, drafter=drafter)
    assert max(fast.accepted_per_pass) > 1
    assert fast.token_ids == plain.token_ids == reference.token_ids[:7] and fast.text == plain.text
    assert [tokens for tokens, _ in fast_rule.seen] == [tokens for tokens, _ in plain_rule.seen]
    for (_, ours), (_, theirs) in zip(fast_rule.seen, plain_rule.seen):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_keep_cache_positions_moves_the_accepted_path_down():
    from lsp_server.engine.speculation.verify import keep_cache_positions

    cache = DynamicCache()
    keys = torch.arange(2 * 10 * 3, dtype=torch.float32).reshape(1, 2, 10, 3)
    cache.update(keys.clone(), -keys.clone(), 0)
    keep_cache_positions(cache, start=6, offsets=[1, 3])  # tree nodes at positions 6..9: keep 7 and 9
    layer = cache.layers[0]
    expected = torch.cat([keys[:, :, :6], keys[:, :, [7, 9]]], dim=2)
    torch.testing.assert_close(layer.keys, expected)
    torch.testing.assert_close(layer.values, -expected)
    keep_cache_positions(cache, start=7, offsets=[0])  # a prefix: just cut
    assert cache.get_seq_length() == 8


def test_exactness_check_finds_no_difference_in_bf16_and_flags_a_corrupted_pass(tiny_loaded_bf16):
    """``bench --check-exact``: every tree pass re-decoded token by token, bit for bit."""
    from lsp_server.bench.exactness import CheckedVerifier

    prompt = _prompt(tiny_loaded_bf16, "".join(f"value_{n} = compute(value_{n - 1}, {n})\n" for n in range(30)))
    plain = _decoder(tiny_loaded_bf16).generate(prompt, 40)
    decoder = _decoder(tiny_loaded_bf16)
    checked = decoder.verify = CheckedVerifier(decoder.verify)
    vocab = tiny_loaded_bf16.model.config.vocab_size
    fast = decoder.generate(prompt, 40, drafter=ScriptedDrafter(prompt + plain.token_ids, "partly", vocab))
    assert fast.token_ids == plain.token_ids
    assert checked.checked_passes > 5 and checked.report()["mismatched_passes"] == 0

    class Corrupting:
        """A verifier whose tree passes return slightly wrong hidden states."""

        def __init__(self, verify):
            self.verify = verify

        def __getattr__(self, name):
            return getattr(self.verify, name)

        def __call__(self, cache, pending, tree):
            result = self.verify(cache, pending, tree)
            if len(tree):
                result.hidden = result.hidden * 1.01
            return result

    decoder = _decoder(tiny_loaded_bf16)
    checked = decoder.verify = CheckedVerifier(Corrupting(decoder.verify))
    decoder.generate(prompt, 40, drafter=ScriptedDrafter(prompt + plain.token_ids, "partly", vocab))
    report = checked.report()
    assert report["mismatched_passes"] == report["checked_passes"] > 0
    assert report["first_mismatches"][0]["rows_differing"]


def test_exactness_check_time_is_kept_from_the_drafter_that_sizes_trees(tiny_loaded_bf16):
    """A drafter sizes its trees by how long passes take: checking must not make trees look costly."""
    import time

    from lsp_server.bench.exactness import install_check

    prompt = _prompt(tiny_loaded_bf16, "".join(f"value_{n} = compute(value_{n - 1}, {n})\n" for n in range(5)))
    plain = _decoder(tiny_loaded_bf16).generate(prompt, 20)
    drafter = ScriptedDrafter(prompt + plain.token_ids, "partly", tiny_loaded_bf16.model.config.vocab_size)
    observed = []
    scripted_observe = drafter.observe

    def record(tokens, tree, verified, seconds):
        observed.append(seconds)
        scripted_observe(tokens, tree, verified, seconds)

    drafter.observe = record
    decoder = _decoder(tiny_loaded_bf16)
    checker = install_check(decoder, drafter)
    compare = checker._compare
    checker._compare = lambda *args: (time.sleep(0.3), compare(*args))
    decoder.generate(prompt, 20, drafter=drafter)
    assert checker.checked_passes > 0 and checker.seconds >= 0.3 * checker.checked_passes
    assert max(observed) < 0.3


def test_a_likely_sibling_off_the_chain_gets_its_logits_from_the_passs_one_product(tiny_loaded):
    """The walk leaves the most probable chain for a sibling the drafter thought likely:
    its logits come from the same LM-head product as the chain's, not from a second one."""
    from lsp_server.engine.kv_cache import new_cache
    from lsp_server.engine.speculation.verify import ROW_WORTH

    prompt = _prompt(tiny_loaded, "def add(a, b):\n    ")
    greedy = _decoder(tiny_loaded).generate(prompt, 3).token_ids
    decoder = _decoder(tiny_loaded)
    decoder.verify.screen = None  # the full product's path (the int8 screen's: test_screened_argmax)
    head, calls = decoder.verify.head, []
    decoder.verify.head = lambda rows: calls.append(len(rows)) or head(rows)
    for sibling_p, products in ((0.5, 1), (ROW_WORTH / 2, 3)):  # unlikely: one more product per row
        cache = new_cache()
        decoder.verify(cache, prompt[:-1], DraftTree.empty())
        wrong = (greedy[0] + 1) % tiny_loaded.model.config.vocab_size
        tree = DraftTree(tokens=[wrong, greedy[0], greedy[1]], parents=[-1, -1, 1], depths=[1, 1, 2],
                         probabilities=[0.9, sibling_p, sibling_p * 0.9], sources=[frozenset()] * 3)
        calls.clear()
        verified = decoder.verify(cache, prompt[-1:], tree)
        assert verified.accepted == greedy[:3] and verified.path == [1, 2]
        assert len(calls) == products


def test_greedy_tokens_pick_what_an_argmax_in_bf16_picks_ties_included():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 40, (500, 3000), generator=generator).to(torch.bfloat16)  # many ties per row
    assert torch.equal(greedy_tokens(logits), logits.argmax(-1))
