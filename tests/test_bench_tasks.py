"""Repository bench tasks in several languages, and the stop-string baseline's cut."""

from __future__ import annotations

import pytest

from lsp_server.bench.methods import cut_at_stop_string, stop_strings
from lsp_server.bench.speed import _methods
from lsp_server.bench.tasks import workspace_tasks

GO = """package geo

// Area of a rectangle.
func Area(w, h int) int {
\t// both sides count
\tproduct := w * h
\tif product < 0 {
\t\treturn 0
\t}
\treturn product
}
"""

CPP = """#include <vector>

int total(const std::vector<int>& xs) {
    int sum = 0;
    for (int x : xs) sum += x;
    return sum;
}
"""

PY = '''class Shape:
    def area(self, w, h):
        """Area."""
        product = w * h
        checked = max(product, 0)
        return checked
'''


def test_tasks_cut_bodies_in_each_language_and_keep_the_closing_brace(tmp_path):
    (tmp_path / "geo.go").write_text(GO)
    (tmp_path / "sum.cpp").write_text(CPP)
    (tmp_path / "shape.py").write_text(PY)
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "dep.js").write_text("function f(a) {\n  a += 1;\n  a *= 2;\n  return a;\n}\n")
    tasks = {task.language: task for task in workspace_tasks(tmp_path, 10, seed=0)}
    assert set(tasks) == {"go", "cpp", "python"}  # node_modules is skipped
    go = tasks["go"]
    assert go.prefix.endswith("// both sides count\n\t") and go.reference.startswith("product := w * h")
    assert go.suffix == "\n}\n" and go.prefix + go.reference + go.suffix == GO
    cpp = tasks["cpp"]
    assert cpp.reference == "int sum = 0;\n    for (int x : xs) sum += x;\n    return sum;" and cpp.suffix == "\n}\n"
    py = tasks["python"]
    assert py.prefix.endswith('"""Area."""\n        ') and py.reference.startswith("product = w * h")
    assert py.prefix + py.reference + py.suffix == PY and py.task_id == "shape.py::area@2"


def test_tasks_are_reproducible_by_seed_and_filtered_by_body_length(tmp_path):
    for i in range(6):
        (tmp_path / f"m{i}.py").write_text(f"def f{i}(x):\n    a = x\n    b = a + {i}\n    return b\n\n\n"
                                           f"def short{i}(x):\n    return x\n")
    first = [task.task_id for task in workspace_tasks(tmp_path, 4, seed=3)]
    assert first == [task.task_id for task in workspace_tasks(tmp_path, 4, seed=3)]
    assert len(first) == 4 and not any("short" in task_id for task_id in first)


def test_stop_strings_per_language_and_the_cut():
    assert "\ndef " in stop_strings("python") and stop_strings("tsx") == stop_strings("javascript")
    assert stop_strings("cpp") == ["\n}"]
    assert cut_at_stop_string("    return x\n\n\ndef other():\n#", stop_strings("python")) == "    return x\n\n"
    assert cut_at_stop_string("return x", ["\n}"]) == "return x"


def test_ceiling_needs_ar_before_it():
    with pytest.raises(SystemExit, match="list ar before it"):
        _methods(["ceiling"], None, frozenset(), None, {})
