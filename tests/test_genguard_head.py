"""GenGuard head files: metadata round trip, refusal of a mismatched head, lookup by model."""

import json

import pytest
import torch

from lsp_server.genguard import (
    GuardHead, HeadError, HeadInfo, find_head, genguard_rule, head_path_for, load_head, read_info, save_head,
    tokenizer_hash,
)
from lsp_server.genguard.head import STOP


def _save(path, hidden_size, tokenizer, name="org/Tiny-Model", width=0, threshold=0.7):
    head = GuardHead(hidden_size, width)
    info = HeadInfo(name, hidden_size, tokenizer_hash(tokenizer), threshold, {"samples": {"python/teacher": 3}})
    save_head(path, head, info)
    return head


def test_round_trip_keeps_weights_and_metadata(tmp_path, tiny_loaded):
    head = _save(tmp_path / "h.safetensors", 64, tiny_loaded.tokenizer, width=8)
    loaded, info = load_head(tmp_path / "h.safetensors", 64, tokenizer_hash(tiny_loaded.tokenizer))
    assert info.base_model == "org/Tiny-Model" and info.threshold == 0.7 and info.training["samples"]
    x = torch.randn(5, 64)
    assert torch.allclose(loaded(x), head(x))
    probs = loaded.stop_probability(x)
    assert probs.shape == (5,) and ((probs > 0) & (probs < 1)).all()
    assert torch.allclose(torch.softmax(head(x), -1)[:, STOP].double(), torch.from_numpy(probs))


def test_hidden_size_mismatch_is_refused_with_a_clear_message(tmp_path, tiny_loaded):
    _save(tmp_path / "h.safetensors", 64, tiny_loaded.tokenizer)
    with pytest.raises(HeadError, match=r"hidden size 64.*hidden size 896: refusing"):
        load_head(tmp_path / "h.safetensors", 896)


def test_tokenizer_mismatch_is_refused(tmp_path, tiny_loaded):
    _save(tmp_path / "h.safetensors", 64, tiny_loaded.tokenizer)
    with pytest.raises(HeadError, match="another tokenizer"):
        load_head(tmp_path / "h.safetensors", 64, "0123456789abcdef")


def test_head_runs_on_wrong_sized_states_is_refused():
    with pytest.raises(HeadError, match="expects 64"):
        GuardHead(64).stop_probability(torch.zeros(2, 32))


def test_a_file_that_is_not_a_head_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"), metadata={"format": "other"})
    with pytest.raises(HeadError, match="not a GenGuard head"):
        read_info(tmp_path / "x.safetensors")


def test_lookup_by_model_name_and_fallback(tmp_path, tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    _save(tmp_path / "tiny-model.safetensors", 64, tokenizer, name="org/Tiny-Model", threshold=0.65)
    path, reason = find_head("/some/folder/tiny-model", 64, tokenizer, tmp_path)
    assert path == tmp_path / "tiny-model.safetensors" and "0.65" in reason
    rule = genguard_rule("Org/Tiny-Model", 64, tokenizer, "python", heads_dir=tmp_path)
    assert rule is not None and rule.threshold == 0.65
    assert genguard_rule("Org/Tiny-Model", 64, tokenizer, "python", threshold=0.9, heads_dir=tmp_path).threshold == 0.9
    assert genguard_rule("other/model", 64, tokenizer, "python", heads_dir=tmp_path) is None
    path, reason = find_head("org/tiny-model", 896, tokenizer, tmp_path)
    assert path is None and "hidden size 64" in reason
    assert genguard_rule("org/tiny-model", 896, tokenizer, "python", heads_dir=tmp_path) is None


def test_shipped_default_head_matches_the_default_model_metadata():
    from lsp_server.engine.default_model import MODEL_ID

    path = head_path_for(MODEL_ID)
    assert path.exists(), "the trained head for the default model must ship in the package"
    info = read_info(path)
    assert info.base_model == MODEL_ID and info.hidden_size == 896
    assert 0 < info.threshold < 1
    assert {"python", "javascript", "go", "cpp"} <= {key.split("/")[0] for key in info.training["train_counts"]}
    json.dumps(info.training)
