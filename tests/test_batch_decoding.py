"""Batched greedy decoding (training data) against the engine's one-sequence greedy decoder."""

from __future__ import annotations

import pytest
import torch

from lsp_server.engine import batch_decoding
from lsp_server.engine.batch_decoding import _packs, greedy_batch
from lsp_server.engine.decoding import Decoder
from lsp_server.engine.kv_cache import new_cache
from lsp_server.engine.prompt import PromptBuilder

TEXTS = ["def add(a, b):\n    return ", "import os\n\n\nclass Reader:\n    def __init__(self, path):\n        self.",
         "x = 1", "for item in items:\n    total += item\nprint(total"]


def _prompts(loaded) -> list[list[int]]:
    """The texts' prompts, each of its own length (so every row is padded differently).  The
    tiny tokenizer is trained on this repository's code, so lengths shift as the code changes:
    a text whose length is taken gets comment lines in front until it is not."""
    builder = PromptBuilder(loaded.tokenizer)
    prompts: list[list[int]] = []
    for text in TEXTS:
        ids = builder.build(text, "", 512, fresh=True).ids
        while len(ids) in {len(prompt) for prompt in prompts}:
            text = "# -\n" + text
            ids = builder.build(text, "", 512, fresh=True).ids
        prompts.append(ids)
    return prompts


def test_prompts_are_packed_in_order_up_to_the_limit_and_a_long_one_alone(monkeypatch):
    monkeypatch.setattr(batch_decoding, "PACK_TOKENS", 10)
    assert _packs([[0] * 4, [0] * 6, [0] * 3, [0] * 12, [0] * 2, [0] * 10]) == [[0, 1], [2], [3], [4], [5]]


@pytest.mark.parametrize("packing", ["one pass", "several passes"])
def test_rows_decode_as_they_would_alone(tiny_loaded, monkeypatch, packing):
    prompts = _prompts(tiny_loaded)
    assert len({len(prompt) for prompt in prompts}) == len(prompts)  # every row padded differently
    if packing == "several passes":  # the two shortest share a pass, the longest has one of its own
        shortest, second, *_rest, longest = sorted(len(prompt) for prompt in prompts)
        monkeypatch.setattr(batch_decoding, "PACK_TOKENS", shortest + second)
        assert longest > shortest + second and len(_packs(prompts)) >= 3
    plain = Decoder(tiny_loaded.model, tiny_loaded.tokenizer, frozenset(), reuse_kv=False)
    free = [plain.generate(prompt, 10).token_ids for prompt in prompts]
    # A row ends at a token it has not produced before (its 4th if it can) that some other
    # row never produces, so that one goes on to the budget without it in the batch.  The
    # tiny model's output shifts with the tokenizer, which is trained on this repository's
    # code, and a row may repeat one token throughout.
    row, at = next((row, at) for at in (3, 2, 4, 5, 6, 7, 8, 1) for row, tokens in enumerate(free)
                   if tokens[at] not in tokens[:at] and any(tokens[at] not in other for other in free))
    stop_ids = frozenset({free[row][at]})
    decoder = Decoder(tiny_loaded.model, tiny_loaded.tokenizer, stop_ids, reuse_kv=False)
    outputs = greedy_batch(tiny_loaded.model, prompts, 10, stop_ids)
    for prompt, out in zip(prompts, outputs):
        reference = decoder.generate(prompt, 10)
        assert out.token_ids == reference.token_ids
        assert out.stop_reason == reference.stop_reason
        # The state that predicted each output token: the prompt's last, then the tokens' own.
        states = decoder.hidden_states(prompt + out.token_ids, new_cache())[len(prompt) - 1 : -1]
        torch.testing.assert_close(out.states, states, atol=1e-4, rtol=1e-4)
    assert outputs[row].stop_reason == "end-of-text" and len(outputs[row].token_ids) == at
    assert any(out.stop_reason == "length" and len(out.token_ids) == 10 for out in outputs)


def test_empty_prompt_or_budget_is_refused(tiny_loaded):
    with pytest.raises(ValueError):
        greedy_batch(tiny_loaded.model, [[1, 2], []], 4, frozenset())
    with pytest.raises(ValueError):
        greedy_batch(tiny_loaded.model, [[1, 2]], 0, frozenset())


def test_build_data_refuses_a_batch_below_one(tmp_path, capsys):
    from lsp_server.genguard.cli import main

    assert main(["genguard", "build-data", "--batch", "0", "--out", str(tmp_path / "shard.npz")]) == 2
    assert "--batch" in capsys.readouterr().err
