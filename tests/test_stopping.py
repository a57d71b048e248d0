import pytest

from lsp_server.engine.stopping import DedentStop, StopRules, SuffixRepeatStop, baseline_rules, tidy_completion


def _run(rule, prefix: str, suffix: str, completion: str) -> str:
    """Feed ``completion`` one character at a time, as a decoder would, and apply the cut."""
    rule.begin(prefix, suffix)
    for end in range(1, len(completion) + 1):
        decision = rule.step(completion[:end], [0], None)
        if decision is not None:
            return completion[: decision.keep_chars]
    return completion


def test_body_ends_at_dedent():
    body = "if n < 2:\n        return n\n    return fib(n - 1)\n\ndef other():\n    pass\n"
    out = _run(DedentStop(), "def fib(n):\n    ", "", body)
    assert out == "if n < 2:\n        return n\n    return fib(n - 1)\n\n"


def test_block_opened_on_cursor_line_ends_at_same_indent():
    out = _run(DedentStop(), "def f():", "", "\n    return 1\ndef g():\n")
    assert out == "\n    return 1\n"


def test_first_line_is_never_cut_and_blank_lines_are_ignored():
    out = _run(DedentStop(), "    x = ", "", "compute()\n\n    y = 2\n")
    assert out == "compute()\n\n    y = 2\n"


def test_repeating_the_suffix_stops():
    suffix = "\n    return total\n"
    out = _run(SuffixRepeatStop(), "def s(xs):\n    total = 0\n    ", suffix, "for x in xs:\n        total += x\n    return total\n")
    assert out == "for x in xs:\n        total += x\n"


@pytest.mark.parametrize(
    ("text", "suffix", "expected"),
    [("print(x)", ")\n", "print(x"), ("a = 1\n\n\n", "\nb", "a = 1"), ("f(1)", "", "f(1)"), ("x", "   \n", "x")],
)
def test_tidy(text, suffix, expected):
    assert tidy_completion(text, suffix) == expected


def test_combined_rules_take_the_earliest_cut():
    rules = StopRules([DedentStop(), SuffixRepeatStop()])
    out = _run(rules, "def f():\n    ", "\n    return y\n", "y = 1\n    return y\ndef g():\n")
    assert out == "y = 1\n"
    assert isinstance(baseline_rules(), StopRules)
