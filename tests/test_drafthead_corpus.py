"""Draft-head data from windows of real files: spread, exclusions, alignment, and the command line."""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import numpy as np
import torch
from safetensors import safe_open

from lsp_server.cli import main
from lsp_server.drafthead import train as drafthead_train
from lsp_server.drafthead.corpus import iter_windows, window_sample
from lsp_server.drafthead.head import read_head_info
from lsp_server.engine.decoding import Decoder
from lsp_server.engine.kv_cache import new_cache
from lsp_server.genguard.data import IGNORE, Source

CODE = "".join(f"def helper_{i}(value):\n    return value * {i} + len(str(value))\n\n\n" for i in range(60))


def _repos(root, names=("alpha", "beta", "gamma")):
    for name in names:
        (root / name).mkdir(parents=True)
        for number in range(3):
            (root / name / f"mod{number}.py").write_text(CODE)
    return root


def test_windows_are_real_slices_capped_per_file_and_repository(tmp_path, tiny_loaded):
    source = Source("python", _repos(tmp_path / "py"))
    tokenizer = tiny_loaded.tokenizer
    ids = tokenizer(CODE, add_special_tokens=False)["input_ids"]
    windows = list(iter_windows(source, tokenizer, window=64, per_file=2, per_repo=300, seed=0))
    per_repo = {repo: sum(len(w.ids) for w in windows if w.span.repo == repo) for repo in ("alpha", "beta", "gamma")}
    assert all(128 <= got <= 300 for got in per_repo.values()), per_repo
    per_file = {path: sum(1 for w in windows if w.span.path == path) for path in {w.span.path for w in windows}}
    assert max(per_file.values()) == 2
    for window in windows:
        start = int(window.span.name.split("@")[1])
        assert window.ids == ids[start : start + len(window.ids)] and start % 64 == 0


def test_a_window_holding_a_humaneval_signature_is_left_out(tmp_path, tiny_loaded):
    source = Source("python", _repos(tmp_path / "py", ("alpha",)))
    exclude = frozenset(f"def helper_{i}(value):" for i in range(60))
    assert not list(iter_windows(source, tiny_loaded.tokenizer, 64, 2, 10_000, 0, exclude))


def test_row_j_is_the_state_that_predicted_token_j(tiny_loaded, tmp_path):
    """The alignment GenGuard's shards use: features[j] comes from the tokens before token_ids[j]."""
    source = Source("python", _repos(tmp_path / "py", ("alpha",)))
    window = next(iter_windows(source, tiny_loaded.tokenizer, 64, 1, 10_000, 0))
    decoder = Decoder(tiny_loaded.model, tiny_loaded.tokenizer, frozenset(), reuse_kv=False)
    sample = window_sample(decoder, window)
    assert sample.token_ids.tolist() == window.ids[1:] and (sample.labels == IGNORE).all()
    for j in (0, 7, len(window.ids) - 2):
        alone = decoder.hidden_states(window.ids[: j + 1], new_cache())[-1]
        assert torch.allclose(torch.from_numpy(sample.features[j]).float(), alone.float(), atol=1e-2)
        assert sample.picks[j] == int(tiny_loaded.model.get_output_embeddings()(alone).argmax())


def test_build_data_then_train_through_the_command_line(tmp_path, tiny_model_dir, capsys):
    root = _repos(tmp_path / "py", ("alpha", "beta", "gamma", "delta"))
    shard = tmp_path / "data" / "files.npz"
    assert main(["drafthead", "build-data", "--model", str(tiny_model_dir), "--source", f"python={root}",
                 "--tokens", "2000", "--window", "96", "--per-repo", "600", "--out", str(shard)]) == 0
    with np.load(shard, allow_pickle=False) as data:
        assert 2000 <= len(data["token_ids"]) < 2000 + 96 and set(data["sample_kind"]) == {"file"}
        assert len(set(data["sample_repo"])) == 4 and data["features"].dtype == np.float16
        assert json.loads(str(data["meta"]))["tokens"]["python/file"] == len(data["token_ids"])
        assert data["picks"].shape == data["token_ids"].shape and (data["picks"] >= 0).all()
    timed = tmp_path / "data" / "timed.npz"  # a spent budget: one window from each source, none forgotten
    other = _repos(tmp_path / "py2", ("epsilon",))
    assert main(["drafthead", "build-data", "--model", str(tiny_model_dir), "--source", f"python={root}",
                 "--source", f"python={other}", "--tokens", "2000", "--window", "96", "--time-budget", "0",
                 "--out", str(timed)]) == 0
    with np.load(timed, allow_pickle=False) as data:
        assert len(data["sample_repo"]) == 2 and "epsilon" in set(data["sample_repo"])
    report = tmp_path / "draft.json"
    train = ["drafthead", "train", "--model", str(tiny_model_dir), "--data", str(shard), "--vocab", "64",
             "--width", "16", "--epochs", "1", "--holdout-fraction", "0.5", "--out", str(tmp_path / "head.st")]
    capsys.readouterr()
    assert main(train) == 0
    once = re.search(r"epoch 1/1 \((\d+) windows", capsys.readouterr().err)
    assert main([*train, "--repeat", "file=2", "--report", str(report)]) == 0
    twice = re.search(r"epoch 1/1 \((\d+) windows", capsys.readouterr().err)
    assert once and twice and int(twice[1]) == 2 * int(once[1]) > 0  # the weighting reaches the training loop
    trained = json.loads(report.read_text())
    assert set(trained["heldout"]) == {"file"} and trained["pairs"] > 0 and trained["repeat"] == ["file=2"]
    assert trained["repos"] and set(trained["repos"]) < {"alpha", "beta", "gamma", "delta"}  # some held out
    left_out = trained["repos"][0]
    assert main([*train, "--exclude-repo", f"{left_out.upper()}-1.0", "--report", str(report)]) == 0
    without = json.loads(report.read_text())
    assert without["excluded_repos"] == [left_out] and left_out not in without["repos"]
    assert 0 < without["pairs"] < trained["pairs"]
    assert read_head_info(tmp_path / "head.st").training["repos"] == without["repos"]
    assert main(["drafthead", "train", "--model", str(tiny_model_dir), "--data", str(shard),
                 "--repeat", "generated=2"]) == 2  # no generated pairs to weight: refused before training
    assert main(["drafthead", "train", "--model", str(tiny_model_dir)]) == 2  # no data: a clear refusal


def test_build_runs_the_whole_recipe_and_a_second_build_adds_new_generations(tmp_path, tiny_model_dir):
    root = tmp_path / "py"
    for name in ("alpha", "beta", "gamma", "delta"):
        (root / name).mkdir(parents=True)
        for number in range(3):
            (root / name / f"mod{number}.py").write_text("".join(
                f'def {name}_{number}_{i}(value, scale={i}):\n    """Scale value by {i}."""\n'
                f"    total = value * scale\n    return total + len(str(value))\n\n\n" for i in range(12)))
    shards, head = tmp_path / "shards", tmp_path / "head.st"
    build = ["drafthead", "build", "--model", str(tiny_model_dir), "--source", f"python={root}", "--minutes", "0.02",
             "--shards", str(shards), "--vocab", "64", "--width", "16", "--epochs", "1", "--holdout-fraction", "0.5",
             "--out", str(head)]
    assert main([*build, "--report", str(tmp_path / "first.json")]) == 0
    assert sorted(path.name for path in shards.iterdir()) == ["files.npz", "generated-1.npz"]
    first = json.loads((tmp_path / "first.json").read_text())
    assert first["repeat"] == ["generated=2"] and first["epochs"] == 1 and head.is_file()
    assert 1 <= first["steps"] <= first["planned_steps"]  # training has what the data left of the budget
    files_made = (shards / "files.npz").stat().st_mtime_ns
    assert main([*build, "--report", str(tmp_path / "second.json")]) == 0
    assert sorted(path.name for path in shards.iterdir()) == ["files.npz", "generated-1.npz", "generated-2.npz"]
    assert (shards / "files.npz").stat().st_mtime_ns == files_made  # file windows are made once
    with np.load(shards / "generated-1.npz", allow_pickle=False) as one, \
            np.load(shards / "generated-2.npz", allow_pickle=False) as two:
        assert not set(one["sample_path"] + one["sample_name"]) & set(two["sample_path"] + two["sample_name"])
    second = json.loads((tmp_path / "second.json").read_text())
    assert second["pairs"] > first["pairs"]  # trained on both builds' shards
    assert "init" not in first and second["init"]["head"] == str(head)  # the second build continued the first's head
    assert second["lr"] < first["lr"] and second["init"]["pairs"] == first["pairs"]
    assert main([*build, "--exclude-repo", "gamma", "--minutes", "0.01", "--report", str(tmp_path / "third.json")]) == 0
    third = json.loads((tmp_path / "third.json").read_text())
    assert third["excluded_repos"] == ["gamma"] and "gamma" not in third["repos"]
    assert "init" not in third  # the head had learned from gamma: a new one, not a continued one
    assert main([*build, "--fresh", "--minutes", "0.01", "--report", str(tmp_path / "fourth.json")]) == 0
    assert "init" not in json.loads((tmp_path / "fourth.json").read_text())


def test_training_continues_from_a_head_and_keeps_what_it_learned_from(tmp_path, tiny_model_dir, monkeypatch):
    root = _repos(tmp_path / "py", ("alpha", "beta", "gamma", "delta"))
    shard = tmp_path / "data" / "files.npz"
    assert main(["drafthead", "build-data", "--model", str(tiny_model_dir), "--source", f"python={root}",
                 "--tokens", "2000", "--window", "96", "--per-repo", "600", "--out", str(shard)]) == 0
    first, second, report = tmp_path / "first.st", tmp_path / "second.st", tmp_path / "second.json"
    common = ["drafthead", "train", "--model", str(tiny_model_dir), "--data", str(shard), "--epochs", "1",
              "--holdout-fraction", "0.5"]
    assert main([*common, "--vocab", "48", "--width", "16", "--context", "8", "--out", str(first)]) == 0
    learned = read_head_info(first).training["repos"]
    left_out = learned[0]
    # The continued run names other settings: the head's own vocabulary, width and context win.
    assert main([*common, "--vocab", "64", "--width", "32", "--exclude-repo", left_out, "--init", str(first),
                 "--lr", "0", "--out", str(second), "--report", str(report)]) == 0
    info = read_head_info(second)
    assert (info.width, info.context) == (16, 8)
    assert set(info.training["repos"]) == set(learned)  # left out now, but the first head had learned from it
    continued = json.loads(report.read_text())
    assert continued["init"]["head"] == str(first) and continued["vocab"] == read_head_info(first).training["vocab"] <= 48
    judged = continued["continued"]
    assert judged["judged_on"] == "file" and judged["before"] == judged["after"]  # nothing moved: a tie
    assert judged["kept"] == "continued head"
    with safe_open(str(first), "pt") as before, safe_open(str(second), "pt") as after:
        assert before.keys() == after.keys()
        for name in before.keys():  # no learning rate: nothing moved
            assert torch.equal(before.get_tensor(name), after.get_tensor(name)), name
    # Where the head it started from guessed better (here: said to be perfect), that head is kept.
    monkeypatch.setattr(drafthead_train, "head_accuracy", lambda *args: ([(1.0, 1.0)] * 3, 0.0))
    third, kept = tmp_path / "third.st", tmp_path / "third.json"
    assert main([*common, "--init", str(first), "--out", str(third), "--report", str(kept)]) == 0
    assert json.loads(kept.read_text())["continued"]["kept"] == "earlier head"
    assert third.read_bytes() == first.read_bytes()
    assert main([*common[:-1], "0.3", "--init", str(first), "--out", str(second)]) == 2  # another held-out split
    assert main([*common, "--init", str(tmp_path / "missing.st"), "--out", str(second)]) == 2


def test_the_closing_evaluation_is_priced_by_the_positions_it_reads():
    # Samples 0 and 1 (4 and 2 positions) hold pairs of one part, sample 2 (3 positions) of both.
    index = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    data = SimpleNamespace(sample_index=index, samples=3)
    inside, after = drafthead_train.Pairs(np.array([0, 4, 6]), *[np.zeros((3, 1))] * 2), \
        drafthead_train.Pairs(np.array([7]), *[np.zeros((1, 1))] * 2)
    assert drafthead_train.positions_read(data, inside) == 9 and drafthead_train.positions_read(data, after) == 3
    # A part sharing its samples with another costs its samples' positions again, not its pairs.
    assert drafthead_train.closing_evaluation_seconds(data, {"a": inside, "b": after}, 3.0, after) == 12.0


def test_a_time_budget_keeps_time_for_the_closing_evaluation(tmp_path, tiny_model_dir, monkeypatch, capsys):
    root = _repos(tmp_path / "py", ("alpha", "beta", "gamma", "delta"))
    shard = tmp_path / "data" / "files.npz"
    assert main(["drafthead", "build-data", "--model", str(tiny_model_dir), "--source", f"python={root}",
                 "--tokens", "2000", "--window", "96", "--per-repo", "600", "--out", str(shard)]) == 0
    train = ["drafthead", "train", "--model", str(tiny_model_dir), "--data", str(shard), "--vocab", "64",
             "--width", "16", "--epochs", "2", "--holdout-fraction", "0.5", "--time-budget", "600",
             "--out", str(tmp_path / "head.st")]
    rows = drafthead_train.score_rows

    def slow_rows(*args):  # setup that the closing evaluation inside training does not repeat
        time.sleep(3.0)
        return rows(*args)

    monkeypatch.setattr(drafthead_train, "score_rows", slow_rows)
    capsys.readouterr()
    assert main(train) == 0  # a cheap evaluation leaves the steps all they need
    err = capsys.readouterr().err
    assert "time budget reached" not in err
    assert float(re.search(r"about (\d+)s kept for the closing evaluation", err).group(1)) < 2.0  # setup not priced
    monkeypatch.setattr(drafthead_train, "score_rows", rows)
    probe = drafthead_train.timed_probe
    monkeypatch.setattr(drafthead_train, "timed_probe", lambda *args: (1e6, probe(*args)[1]))
    assert main(train) == 0  # an evaluation said to take longer than the budget: one step, then it
    assert re.search(r"time budget reached after 1 of \d+ steps", capsys.readouterr().err)


def test_a_build_whose_training_ends_early_goes_on_with_another_round(tmp_path, tiny_model_dir, monkeypatch):
    """Time left after the epochs: new generations, then the head continued, in the same build."""
    from lsp_server.drafthead import build as drafthead_build

    root = tmp_path / "py"
    for name in ("alpha", "beta"):
        (root / name).mkdir(parents=True)
        (root / name / "mod.py").write_text("".join(
            f"def {name}_{i}(value):\n    return value * {i} + len(str(value))\n\n\n" for i in range(60)))
    began = time.perf_counter()
    monkeypatch.setattr(drafthead_build, "clock", lambda: began + (time.perf_counter() - began) / 100)  # a slow clock
    monkeypatch.setattr(drafthead_build, "ANOTHER_ROUND_SECONDS", 1.0)
    monkeypatch.setattr(drafthead_build, "MAX_ROUNDS", 2)
    shards, head, report = tmp_path / "shards", tmp_path / "head.st", tmp_path / "report.json"
    assert main(["drafthead", "build", "--model", str(tiny_model_dir), "--source", f"python={root}", "--minutes", "0.05",
                 "--shards", str(shards), "--vocab", "64", "--width", "16", "--epochs", "1", "--holdout-fraction", "0.5",
                 "--out", str(head), "--report", str(report)]) == 0
    assert sorted(path.name for path in shards.iterdir()) == ["files.npz", "generated-1.npz", "generated-2.npz"]
    assert json.loads(report.read_text())["init"]["head"] == str(head)  # the second round continued the first's head


def test_another_round_only_where_its_training_would_hold_an_epoch():
    from lsp_server.drafthead.build import ANOTHER_ROUND_SECONDS, GENERATION_SHARE, MAX_ROUNDS, another_round

    left = 2 * ANOTHER_ROUND_SECONDS
    training_share = left * (1 - GENERATION_SHARE)
    assert another_round(left, training_share * 0.9, 1)
    assert not another_round(left, training_share * 1.1, 1)  # its epoch would be cut short
    assert not another_round(ANOTHER_ROUND_SECONDS * 0.9, 1.0, 1)  # too little left at all
    assert not another_round(left, 1.0, MAX_ROUNDS)
