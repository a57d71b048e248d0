"""`swiftguard bench` end to end on the tiny model: the JSON contract, and lossless in fp32."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_workspace_report_follows_the_contract(tmp_path, tiny_model_dir):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "shapes.py").write_text(
        "def area(width, height):\n    \"\"\"Area of a rectangle.\"\"\"\n    product = width * height\n"
        "    checked = max(product, 0)\n    return checked\n\n\n"
        "def perimeter(width, height):\n    total = width + height\n    doubled = 2 * total\n    return doubled\n"
    )
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
