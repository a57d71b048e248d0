"""GenGuard's line voting on hand-made votes, and its independence from speculative step sizes."""

import random

import pytest
import torch
from genguard_probe import probe_head

from lsp_server.genguard import GenGuardStop

STOP, GO = 6.0, -6.0  # hidden "states" whose stop probability is sigmoid(+-6)


class PieceTokenizer:
    """Token i decodes to PIECES[i]: enough of a tokenizer for the rule."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids) -> str:
        return "".join(self.pieces[i] for i in ids)


def _feed(rule: GenGuardStop, tokens: list[tuple[str, float]], sizes: list[int] | None = None):
    """Feed (piece, vote) tokens in steps of the given sizes; returns (decision, tokens fed)."""
    pieces = [piece for piece, _ in tokens]
    rule.tokenizer = PieceTokenizer(pieces)
    rule.begin("", "")
    hidden = torch.tensor([[0.0, vote] for _, vote in tokens], dtype=torch.bfloat16)
    sizes = sizes or [1] * len(tokens)
    fed = 0
    for size in sizes:
        ids = list(range(fed, min(fed + size, len(tokens))))
        if not ids:
            break
        fed += len(ids)
        decision = rule.step("".join(pieces[:fed]), ids, hidden[ids[0] : ids[-1] + 1])
        if decision is not None:
            return decision, fed
    return None, fed


def _rule(min_new_tokens: int = 0) -> GenGuardStop:
    return GenGuardStop(probe_head(), PieceTokenizer([]), threshold=0.5, min_new_tokens=min_new_tokens)


def test_strict_majority_of_a_line_stops_and_cuts_before_that_line():
    tokens = [("    return", GO), (" x", GO), ("\n", STOP), ("\n", STOP),
              ("def", STOP), (" g", STOP), ("():", GO), ("\n", GO)]
    decision, _ = _feed(_rule(), tokens)
    assert decision is not None and decision.reason == "genguard"
    assert decision.keep_chars == len("    return x\n")  # the blank line before the voted line goes too


def test_a_tie_is_not_a_majority():
    tokens = [("a", STOP), ("b", GO), ("\n", STOP), ("c", GO), ("\n", GO)]
    assert _feed(_rule(), tokens)[0] is None


def test_newline_tokens_do_not_vote_and_vote_goes_to_the_line_of_the_first_character():
    # "x" votes continue; the newline-only token's STOP vote must not count; ")\n" votes in line 2.
    tokens = [("x", GO), ("\n", STOP), ("y", STOP), (")\n", GO), ("z", GO), ("\n", GO)]
    assert _feed(_rule(), tokens)[0] is None
    tokens = [("x", GO), ("\n", STOP), ("y", STOP), (")\n", STOP), ("z", GO), ("\n", GO)]
    decision, fed = _feed(_rule(), tokens)
    assert decision.keep_chars == 2 and fed == 4


def test_min_new_tokens_delays_judgement():
    tokens = [("a", STOP), ("\n", GO), ("b", GO), ("\n", GO)]
    assert _feed(_rule(min_new_tokens=3), tokens)[0] is None
    assert _feed(_rule(min_new_tokens=2), tokens)[0].keep_chars == 0


def test_more_than_three_empty_lines_stop_before_them():
    tokens = [("x = 1", GO), ("\n", GO)] + [("\n", GO)] * 3
    assert _feed(_rule(), tokens)[0] is None
    tokens += [("   ", GO), ("\n", GO)]
    decision, _ = _feed(_rule(), tokens)
    assert decision.reason == "genguard-empty-lines" and decision.keep_chars == len("x = 1\n")


def test_threshold_is_a_setting():
    tokens = [("a", 0.5), ("\n", GO)]  # P(stop) = sigmoid(0.5) ~ 0.62
    rule = _rule()
    rule.threshold = 0.7
    assert _feed(rule, tokens)[0] is None
    rule.threshold = 0.6
    assert _feed(rule, tokens)[0] is not None


def test_missing_hidden_states_are_an_error_not_a_silent_pass():
    rule = _rule()
    with pytest.raises(ValueError, match="hidden states"):
        rule.step("a", [0], None)


@pytest.mark.parametrize("seed", range(25))
def test_step_sizes_do_not_change_the_decision(seed):
    """The same tokens and states split into random step sizes: same decision, same cut."""
    rng = random.Random(seed)
    pieces = ["x", " = ", "1", "\n", "\n\n", "    ", "return", ":\n", ")", "\n", "  ", "def", " f", "é", "}\n"]
    tokens = [(rng.choice(pieces), rng.choice([STOP, GO, 0.3])) for _ in range(rng.randint(5, 60))]
    min_tokens = rng.randint(0, 12)
    one_by_one, fed_one = _feed(_rule(min_tokens), tokens)
    for _ in range(5):
        sizes = []
        while sum(sizes) < len(tokens):
            sizes.append(rng.randint(1, 6))
        split, fed = _feed(_rule(min_tokens), tokens, sizes)
        assert split == one_by_one
        if one_by_one is not None:
            assert fed >= fed_one and fed - fed_one < max(sizes)  # decided within the step holding that token


def test_real_tokenizer_with_multibyte_characters(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    text = "def f():\n    return 'ü€'\n\n\ndef g():\n    pass\n"
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    second = text.index("def g")
    votes = [STOP if start >= second - 2 else GO for start, _ in encoded["offset_mapping"]]
    hidden = torch.tensor([[0.0, v] for v in votes])
    results = []
    for sizes in ([1] * len(ids), [3] * len(ids), [7] * len(ids), [len(ids)]):
        rule = GenGuardStop(probe_head(), tokenizer, 0.5, min_new_tokens=0)
        rule.begin("", "")
        fed, decision = 0, None
        for size in sizes:
            step = list(range(fed, min(fed + size, len(ids))))
            if not step:
                break
            fed += len(step)
            decision = rule.step(tokenizer.decode(ids[:fed]), [ids[i] for i in step], hidden[step[0] : step[-1] + 1])
            if decision is not None:
                break
        results.append(decision)
    assert all(r == results[0] for r in results)
    assert results[0] is not None and results[0].keep_chars == len("def f():\n    return 'ü€'\n")


def test_stop_vote_inside_an_open_bracket_is_overruled_with_a_grammar():
    tokens = [("    return", GO), (" f(", GO), ("\n", GO), ("        a,", STOP), ("\n", GO),
              ("    )", GO), ("\n", GO), ("x", STOP), ("\n", GO)]
    decision, _ = _feed(_rule(), tokens)
    assert decision.keep_chars == len("    return f(\n")  # without a grammar the vote wins, mid-call
    rule = _rule()
    rule.language = "python"
    decision, _ = _feed(rule, tokens)
    assert decision.keep_chars == len("    return f(\n        a,\n    )\n")


def test_stop_vote_right_after_a_local_assignment_is_overruled_with_a_grammar():
    """Cutting after ``ordered = ...`` would return before the value is used (HumanEval/86 was lost
    like this): with a grammar the vote is overruled, the line is kept and the rule goes on."""
    tokens = [("    ordered", GO), (" = sorted(s)", GO), ("\n", GO), ("    #", STOP), (" join", STOP), ("\n", GO),
              ("    return", GO), (" ordered", GO), ("\n", GO), ("x", STOP), ("\n", GO)]
    decision, _ = _feed(_rule(), tokens)
    assert decision.keep_chars == len("    ordered = sorted(s)\n")
    rule = _rule()
    rule.language = "python"
    decision, _ = _feed(rule, tokens)
    assert decision.keep_chars == len("    ordered = sorted(s)\n    # join\n    return ordered\n")

