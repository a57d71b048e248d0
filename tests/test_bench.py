"""`swiftguard bench` end to end on the tiny model: the JSON contract, and lossless in fp32."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lsp_server.bench.methods import GenerateMethod, MethodRun
from lsp_server.bench.quality import edit_similarity, first_line_exact
from lsp_server.bench.speed import _summary
from lsp_server.cli import _parser
from lsp_server.engine.prompt import PromptBuilder
from lsp_server.stop_rule import StopDecision


def _shapes_repo(tmp_path):
    """A workspace with one Python file of two functions whose bodies have three lines each."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "shapes.py").write_text(
        "def area(width, height):\n    \"\"\"Area of a rectangle.\"\"\"\n    product = width * height\n"
        "    checked = max(product, 0)\n    return checked\n\n\n"
        "def perimeter(width, height):\n    total = width + height\n    doubled = 2 * total\n    return doubled\n"
    )
    return repo


def test_bench_workspace_report_follows_the_contract(tmp_path, tiny_model_dir):
    repo = _shapes_repo(tmp_path)
    (repo / "shapes.js").write_text(
        "function volume(w, h, d) {\n  const base = w * h;\n  const total = base * d;\n  return total;\n}\n"
    )
    report_path = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "lsp_server", "--log-level", "warning", "bench", "--workspace", str(repo),
         "--tasks", "3", "--max-new-tokens", "12", "--model", str(tiny_model_dir), "--dtype", "float32",
         "--methods", "ar,pld,swift,swift-fixed4,ar-stopstrings,ceiling", "--json", str(report_path), "--plot", str(tmp_path / "plot.png"), "--check-exact"],
        check=True, capture_output=True, text=True, timeout=600,
    )
    report = json.loads(report_path.read_text())
    assert {"model", "device", "dtype", "tasks", "stop", "methods"} <= report.keys()
    assert report["tasks"] == 3 and report["dtype"] == "float32" and report["stop"] == "none"
    for name in ("ar", "pld", "swift", "swift-fixed4", "ceiling"):
        method = report["methods"][name]
        assert {"new_tokens", "seconds", "tokens_per_second", "forward_passes", "mean_accepted_per_pass",
                "identical_to_ar", "pass_at_1"} <= method.keys()
        assert method["new_tokens"] == 36 and method["pass_at_1"] is None
        assert 0.0 <= method["first_line_exact"] <= 1.0
        # The method's edit similarity is the mean of its per-task scores against the removed bodies.
        per_task = [row[name]["edit_similarity"] for row in report["details"]["per_task"]]
        assert abs(method["edit_similarity"] - sum(per_task) / len(per_task)) < 1e-3
    # fp32: the engine's output is plain greedy output, token for token.
    assert report["methods"]["swift"]["identical_to_ar"] == 1.0
    assert report["details"]["divergences"]["swift"] == []
    # Drafts that are always right: ar's output in fewer passes than any real drafter needs.
    ceiling = report["methods"]["ceiling"]
    assert ceiling["identical_to_ar"] == 1.0
    assert ceiling["forward_passes"] < report["methods"]["ar"]["forward_passes"]
    assert ceiling["forward_passes"] <= report["methods"]["swift"]["forward_passes"]
    assert (tmp_path / "plot.png").stat().st_size > 0
    per_language = report["details"]["per_language"]
    assert per_language["python"]["tasks"] == 2 and per_language["javascript"]["tasks"] == 1
    assert per_language["javascript"]["swift"]["new_tokens"] == 12
    assert report["methods"]["ar-stopstrings"]["new_tokens"] <= 36
    assert report["details"]["time_vs_ar_stopstrings"]["ar-stopstrings"] == 1.0
    swift = report["methods"]["swift"]
    assert 0 < swift["first_token_seconds"] < swift["seconds"] and swift["decode_speedup_over_ar"] > 0
    assert report["methods"]["ar"]["decode_speedup_over_ar"] == 1.0
    assert "rates_by_match_length" in report["details"]["swift"]["drafter"]
    # --check-exact: every method with trees reports its check (fp32 here: reported, not asserted bit-exact;
    # swift may find trees not worth it on a noisy machine, a fixed tree size always drafts).
    checks = {name: report["details"][name]["exactness"] for name in ("swift", "swift-fixed4", "ceiling")}
    assert checks["swift-fixed4"]["checked_passes"] > 0 and checks["ceiling"]["checked_passes"] > 0
    assert all("mismatched_passes" in check for check in checks.values())


class _StopAfter:
    """A stop rule that ends the completion after ``count`` tokens, keeping all their text."""

    def __init__(self, count: int) -> None:
        self.count, self.seen = count, 0

    def begin(self, prefix: str, suffix: str) -> None:
        self.seen = 0

    def step(self, text, accepted, hidden):
        self.seen += len(accepted)
        return StopDecision(len(text), "count") if self.seen >= self.count else None


def test_prompt_lookup_counts_no_token_past_the_stop(tiny_loaded):
    """A prompt-lookup pass can accept tokens after the one the stop rule stopped at; plain
    decoding never writes them, so they must not count as new tokens (nor inflate tokens/s)."""
    stop_ids = PromptBuilder(tiny_loaded.tokenizer).stop_ids
    ar, pld = GenerateMethod(tiny_loaded, stop_ids, None), GenerateMethod(tiny_loaded, stop_ids, 10)
    bitten = 0
    # The model's own continuation, put in the prompt again, gives prompt lookup long right
    # drafts where the tiny model repeats itself (which snippets it does depends on its
    # tokenizer, trained on this package's sources: so several are tried).
    for snippet in ("def add(a, b):\n    return a + b\n", "import os\n\n\ndef main():\n", "class Box:\n    def size(self):\n",
                    "for item in range(10):\n", "values = [1, 2, 3]\n", "def test_it():\n    assert "):
        start = tiny_loaded.tokenizer(snippet, add_special_tokens=False)["input_ids"]
        loop = ar.run(start, 24, None).token_ids
        prompt = [*start, *loop, *start, *loop, *start]
        plain, lookup = ar.run(prompt, 40, _StopAfter(3)), pld.run(prompt, 40, _StopAfter(3))
        assert plain.new_tokens == lookup.new_tokens == 3
        assert lookup.token_ids == plain.token_ids and lookup.text == plain.text
        bitten += lookup.forward_passes < plain.forward_passes  # a pass accepted several tokens
    assert bitten  # the check above ran where prompt lookup accepted tokens past the stop


def test_decode_speed_counts_from_the_end_of_the_first_pass():
    """A first pass that accepted drafts yields several tokens before decoding begins: they
    are not decoding's (runs without per-pass counts, like ``generate``'s, yield one)."""
    runs = [MethodRun("", 10, 2.0, 3, [3, 3, 4], first_token_seconds=1.0),
            MethodRun("", 1, 1.0, 1, [1], first_token_seconds=1.0),  # nothing after its first pass
            MethodRun("", 5, 2.0, 5, first_token_seconds=0.5)]
    assert _summary(runs, None, None, None)["decode_tokens_per_second"] == round((7 + 4) / (1.0 + 1.5), 3)


def test_quality_scores_the_completion_against_the_removed_body():
    body = "total = width + height\n    return 2 * total\n"
    assert edit_similarity(body + "  \n", body) == 1.0  # trailing whitespace does not count
    assert edit_similarity("", body) == 0.0
    # Text generated past the body is text the user deletes: it lowers the score.
    assert edit_similarity(body + "\n\ndef area(w, h):\n    return w * h\n", body) < 0.7
    assert edit_similarity("total = width + height\n    return total\n", body) > 0.8
    assert first_line_exact("\n  total = width + height\n    return 0\n", body)
    assert not first_line_exact("total = width * height\n", body)


def test_prompt_options_refuse_budgets_the_prompt_cannot_use(capsys):
    parser = _parser()
    args = parser.parse_args(["bench", "--humaneval", "--context-tokens", "512", "--suffix-share", "0.5"])
    assert (args.context_tokens, args.suffix_share) == (512, 0.5)
    for bad in (["--context-tokens", "0"], ["--context-tokens", "many"], ["--suffix-share", "1.0"],
                ["--suffix-share", "-0.1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["bench", "--humaneval", *bad])
        assert bad[0] in capsys.readouterr().err


def test_only_methods_that_draft_with_the_copy_make_the_load_keep_its_weights():
    from lsp_server.bench.methods import swift_ablation, uses_model_draft

    assert swift_ablation("swift") == "" and swift_ablation("swift-nohead") == "nohead" and swift_ablation("ar") is None
    assert uses_model_draft("swift") and uses_model_draft("swift-nocache")
    assert not any(map(uses_model_draft, ["swift-nomodel", "ar", "pld", "ceiling", "swift-bogus"]))


def test_replay_types_each_function_and_reuses_the_prefix(tmp_path, tiny_model_dir):
    """`swiftguard replay`: requests while typing, every method reusing its cache; fp32: same output."""
    repo = _shapes_repo(tmp_path)
    report_path = tmp_path / "replay.json"
    subprocess.run(
        [sys.executable, "-m", "lsp_server", "--log-level", "warning", "replay", "--workspace", str(repo),
         "--tasks", "2", "--lines", "3", "--max-new-tokens", "10", "--model", str(tiny_model_dir), "--dtype", "float32",
         "--methods", "plain,swift,swift-nohead", "--json", str(report_path)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    report = json.loads(report_path.read_text())
    assert report["tasks"] == 2 and report["requests"] == 6  # both bodies have three lines
    requests = report["details"]["per_request"]
    assert [row["line"] for row in requests] == [0, 1, 2, 0, 1, 2]
    for name in ("plain", "swift", "swift-nohead"):
        method = report["methods"][name]
        assert method["requests"] == 6 and method["new_tokens"] == 60
        # After the first request of a function, the prompt's start is kept from the one before.
        assert all(row[name]["reused"] > 0 for row in requests if row["line"])
        assert 0 < method["reused_prompt_share"] < 1
    assert report["methods"]["plain"]["identical_to_plain"] is None
    assert report["methods"]["swift"]["identical_to_plain"] == 1.0
    assert report["methods"]["swift-nohead"]["identical_to_plain"] == 1.0
    assert report["methods"]["swift"]["speedup_over_plain"] > 0
    assert report["details"]["divergences"] == {"swift": [], "swift-nohead": []}


def test_replay_types_the_body_a_line_at_a_time_with_the_next_indentation():
    from lsp_server.bench.replay import typed_states
    from lsp_server.bench.tasks import Task

    task = Task("t", "def f(x):\n    ", "\n", reference="if x:\n        return 1\n    return 2")
    assert typed_states(task, 5) == ["", "if x:\n        ", "if x:\n        return 1\n    "]
    assert typed_states(task, 1) == [""]
