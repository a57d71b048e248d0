"""Function sites in real code and the tree-sitter end of a generated function (GenGuard's labels)."""

from lsp_server.syntax import function_end, iter_functions

PYTHON = '''import functools


@functools.cache
def outer(n):
    """Doc with a def inside:
def not_code():
    """
    def helper(k):
        return k * 2

    return helper(n)


class A:
    def method(self):
        # leading comment
        return 1
'''


def test_python_sites_skip_docstring_and_keep_decorators():
    sites = {s.name: s for s in iter_functions(PYTHON, "python")}
    outer = sites["outer"]
    assert PYTHON[outer.start :].startswith("@functools.cache")
    assert PYTHON[outer.cursor :].startswith("    def helper")
    assert PYTHON[: outer.end].endswith("return helper(n)")
    assert PYTHON[outer.cut :].startswith("\n\nclass A")
    assert "not_code" not in sites


def test_nested_functions_are_left_out_when_asked():
    names = [s.name for s in iter_functions(PYTHON, "python", top_level_only=True)]
    assert names == ["outer", "method"]


def test_function_end_in_a_generation_that_goes_on():
    prompt = 'def f(x):\n    """Add one."""\n'
    generation = "    def g(y):\n        return y\n    return g(x) + 1\n\n\nprint(f(1))\n"
    end = function_end(prompt + generation, len(prompt), "python")
    assert (prompt + generation)[:end].endswith("return g(x) + 1")


def test_function_end_unknown_mid_expression_in_braces():
    prompt = "int f(int x) {\n"
    assert function_end(prompt + "    return g(x,\n", len(prompt), "cpp") is None
    text = prompt + "    return g(x);\n}\nint main() {}\n"
    assert text[: function_end(text, len(prompt), "cpp")].endswith("return g(x);\n}")


def test_javascript_and_go_and_typescript_sites():
    js = "function add(a, b) {\n  // sum\n  return a + b;\n}\nconst sq = (x) => {\n  return x * x;\n};\n"
    sites = iter_functions(js, "javascript")
    assert [js[s.cursor : s.end] for s in sites] == ["  return a + b;\n}", "  return x * x;\n}"]
    go = "package m\n\nfunc (s *S) Len() int {\n\treturn len(s.items)\n}\n"
    (site,) = iter_functions(go, "go")
    assert site.name == "Len" and go[site.cursor :].startswith("\treturn")
    ts = "export function id<T>(x: T): T {\n  return x;\n}\n"
    (site,) = iter_functions(ts, "typescript")
    assert ts[site.cursor : site.cut] == "  return x;\n}\n"


def test_non_ascii_offsets_are_characters():
    text = 'def f():\n    """Größe."""\n    return "ä"\n\nx = 1\n'
    (site,) = iter_functions(text, "python")
    assert text[site.cursor : site.end] == '    return "ä"'
