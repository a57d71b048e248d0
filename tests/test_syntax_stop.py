"""SyntaxStop on tricky code: each case is fed character by character, as a decoder could split it."""

import pytest

from lsp_server.syntax import SyntaxStop, detect_language


def _run(language: str, prefix: str, completion: str, suffix: str = "") -> tuple[str, str | None]:
    rule = SyntaxStop(language)
    rule.begin(prefix, suffix)
    for end in range(1, len(completion) + 1):
        decision = rule.step(completion[:end], [0], None)
        if decision is not None:
            return completion[: decision.keep_chars], decision.reason
    return completion, None


def test_python_function_ends_at_dedent_after_docstring():
    out, reason = _run("python", 'def f(x):\n    """Doc."""\n', "    y = x + 1\n    return y\n\n\ndef g():\n    pass\n")
    assert out.rstrip() == "    y = x + 1\n    return y"
    assert reason == "syntax-dedent"


def test_nested_function_does_not_end_the_outer_one():
    body = "    def inner(a):\n        return a\n\n    return inner(x)\n"
    out, _ = _run("python", "def f(x):\n", body + "\nprint(f(1))\n")
    assert out.rstrip() == body.rstrip()


def test_multiline_string_at_column_zero_is_not_a_dedent_but_a_decorator_is():
    body = '    s = """\nnot a dedent\n"""\n    return s\n'
    out, reason = _run("python", "def f(x):\n", body + "@decorator\ndef g():\n    pass\n")
    assert out == body and reason == "syntax-dedent"


def test_bracket_continuation_line_is_not_a_dedent():
    out, _ = _run("python", "def f(x):\n", "    return foo(1,\n2)\nx = 1\n")
    assert out == "    return foo(1,\n2)\n"


def test_completion_ending_mid_expression_is_never_cut():
    completion = "    return foo(1,\n"
    assert _run("python", "def f(x):\n", completion) == (completion, None)


def test_method_ends_at_next_decorated_method():
    out, _ = _run("python", "class A:\n    def m(self):\n", "        return 1\n\n    @property\n    def n(self):\n        return 2\n")
    assert out.rstrip() == "        return 1"


def test_opened_block_needs_a_statement_before_it_can_end():
    # The cursor line opened a block; a comment alone does not complete it.
    out, reason = _run("python", "def f(x):", "\n# note\n    return x\nprint(1)\n")
    assert out == "\n# note\n    return x\n" and reason == "syntax-dedent"


def test_top_level_cursor_never_dedents():
    completion = "x = 1\ny = 2\n\nprint(x)\n"
    assert _run("python", "import os\n", completion) == (completion, None)


def test_javascript_arrow_function_with_nested_callback():
    body = "  return a.map((x) => {\n    return x + 1;\n  });\n};"
    out, reason = _run("javascript", "const f = (a) => {\n", body + "\n\nconsole.log(f([1]));\n")
    assert out == body and reason == "syntax-closed"


def test_go_else_branch_reopens_and_function_brace_closes():
    body = "\tif a > b {\n\t\treturn a\n\t} else {\n\t\treturn b\n\t}\n}"
    out, _ = _run("go", "func Max(a, b int) int {\n", body + "\n\nfunc main() {\n}\n")
    assert out == body


def test_cpp_brace_inside_string_is_not_counted():
    body = '    auto s = "}";\n    char c = \'}\';\n    return a + b;\n}'
    out, _ = _run("cpp", "int add(int a, int b) {\n", body + "\n\nint main() { return 0; }\n")
    assert out == body


def test_closing_brace_already_in_the_suffix_is_dropped():
    out, reason = _run("cpp", "int add(int a, int b) {\n", "    return a + b;\n}\nint main() {\n", suffix="}\n\nint other();\n")
    assert out == "    return a + b;\n" and reason == "syntax-closed-suffix"


def test_tail_repeating_the_suffix_is_trimmed():
    out, reason = _run("python", "def f(x):\n    y = 1\n", "    z = y\n    return y + z\n", suffix="    return y + z\n")
    assert out == "    z = y\n" and reason == "syntax-repeats-suffix"


def test_unknown_language_only_trims_the_suffix():
    rule = SyntaxStop(None)
    rule.begin("x", "")
    assert rule.step("a\nb\n}\n", [0], None) is None


@pytest.mark.parametrize("path, language_id, expected", [
    ("a/b.py", None, "python"), ("x.tsx", None, "tsx"), ("x.ts", None, "typescript"), ("m.go", None, "go"),
    ("a.hpp", None, "cpp"), ("lib.rs", None, "rust"), ("A.java", None, "java"), ("x.c", None, "c"),
    ("x.txt", "javascriptreact", "javascript"), ("x.unknown", None, None),
    ("file:///home/me/my%20project/main.go", "", "go"), ("untitled:Untitled-1", None, None),
])
def test_language_detection(path, language_id, expected):
    assert detect_language(path, language_id) == expected


@pytest.mark.parametrize("language, text, expected", [
    ("python", "    return codecs.CodecInfo(\n        name='x',\n", True),
    ("python", "    s = '''abc\n", True),
    ("python", '    s = "("\n    return s\n', False),
    ("javascript", "  return x.map((y) => {\n", True),
    ("javascript", "  return 1;\n}\n", False),
    ("go", "\tx := `(`\n\treturn x\n}\n", False),
    ("cpp", "  f(a,\n", True),
    ("python", "x = (", True),
    ("python", "    # only a comment\n\n", True),
    ("python", "    while n > 1:\n", True),
    ("python", "    while n > 1:\n        step()\n", False),
    # The last statement gives a local variable a value: computed for code not written yet.
    ("python", "    words = s.split()\n    ordered = [sorted(w) for w in words]\n", True),
    ("python", "    for e in exts:\n        if s > best:\n            best = s\n", True),
    ("python", "    while n > 1:\n        n -= 1\n", True),
    ("python", "    a, b = b, a\n", True),
    ("python", "        self.x = x\n        items[0] = 1\n", False),  # stores with side effects
    ("python", "    if not date:\n        return False\n", False),
    ("javascript", "  const n = items.length;\n", True),
    ("javascript", "  n = items.length;\n", True),
    ("javascript", "  this.n = 1;\n", False),
    ("go", "\tx := 1\n", True),
    ("go", "\tobj.x = 1\n", False),
    ("cpp", "    int x = 1;\n", True),
    ("cpp", "    this->x = 2;\n    foo(x);\n", False),
    ("rust", "    let x = 1;\n", True),
    ("rust", "    x\n}\n", False),
    ("java", "    int x = 1;\n", True),
    ("java", "    return x;\n", False),
    ("cpp", "  // nothing yet\n", True),
    ("go", "", True),
])
def test_unfinished(language, text, expected):
    from lsp_server.syntax.stop import unfinished

    assert unfinished(text, language) is expected


@pytest.mark.parametrize("seed", range(6))
def test_chunking_does_not_change_the_cut(seed):
    import random

    rng = random.Random(seed)
    prefix = 'def f(x):\n    """Doc."""\n'
    completion = '    s = """\n(\n"""\n    if x:\n        return s\n    return foo(1,\n2)\n\n# usage\nprint(f(1))\n'
    reference = _run("python", prefix, completion)
    rule = SyntaxStop("python")
    rule.begin(prefix, "")
    end, out = 0, None
    while end < len(completion) and out is None:
        end = min(len(completion), end + rng.randint(1, 9))
        decision = rule.step(completion[:end], [0], None)
        out = None if decision is None else (completion[: decision.keep_chars], decision.reason)
    assert out == reference
    assert reference[0].endswith("return foo(1,\n2)\n\n")
