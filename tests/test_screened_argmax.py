"""The LM head's int8 screen picks exactly the full product's greedy token, ties included."""

from __future__ import annotations

import pytest
import torch

from lsp_server.engine.decoding import Decoder
from lsp_server.engine.linear import install_row_invariant
from lsp_server.engine.prompt import PromptBuilder
from lsp_server.engine.screened_argmax import ScreenedArgmax, screen_for

from test_speculation import ScriptedDrafter

VOCAB, HIDDEN = 6000, 64


class _Holder(torch.nn.Module):
    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.head = head


def _packed_head(weight: torch.Tensor) -> torch.nn.Module:
    """``weight`` as an LM head packed for oneDNN, as a loaded model's is (no plain weight kept)."""
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
    holder = _Holder(head)
    install_row_invariant(holder)
    return holder.head


def _screen(weight: torch.Tensor) -> ScreenedArgmax:
    screen = ScreenedArgmax.for_head(_packed_head(weight), weight.shape[1])
    if screen is None:
        pytest.skip("no exact oneDNN int8 product in this build")
    return screen


def _full(screen: ScreenedArgmax, states: torch.Tensor) -> list[int]:
    with torch.inference_mode():
        return screen.head(states).float().argmax(-1).tolist()


def _tokens(screen: ScreenedArgmax, states: torch.Tensor) -> list[int]:
    rows = screen(states)
    return [rows.token(row) for row in range(len(states))]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_screen_picks_the_full_products_token_on_peaked_and_flat_rows(dtype):
    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(VOCAB, HIDDEN, generator=generator) * 0.05).to(dtype)
    screen = _screen(weight)
    # Rows pointing at a token (as a model's states do) and plain random rows (many candidates).
    targets = torch.randint(0, VOCAB, (200,), generator=generator)
    peaked = weight[targets].float() * 40 + torch.randn(200, HIDDEN, generator=generator)
    flat = torch.randn(200, HIDDEN, generator=generator) * 3
    assert _tokens(screen, peaked.to(dtype)) == _full(screen, peaked.to(dtype)) == targets.tolist()
    assert screen(peaked.to(dtype)).logits.shape == (200, VOCAB)
    assert screen.fallbacks < 10  # the screen decided nearly every row itself
    assert _tokens(screen, flat.to(dtype)) == _full(screen, flat.to(dtype))  # near-ties galore: fallbacks, same tokens


def test_ties_and_one_step_gaps_go_to_the_first_maximum_as_in_the_full_product():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(VOCAB, HIDDEN, generator=generator) * 0.05
    weight[4000] = weight[17]  # an exact tie: the lower id must win
    weight[5000] = weight[30] * (1 + 2**-8)  # within about one bf16 step of token 30
    weight = weight.to(torch.bfloat16)
    screen = _screen(weight)
    states = torch.stack([weight[17].float() * 60, weight[30].float() * 60, weight[5000].float() * 60]).to(torch.bfloat16)
    tokens = _tokens(screen, states)
    assert tokens == _full(screen, states)
    assert tokens[0] == 17
    assert screen.fallbacks >= 1  # a tie cannot be told apart from exact rows: the full product decides


def test_speculation_with_the_screen_equals_greedy_decoding(tiny_loaded_bf16):
    loaded = tiny_loaded_bf16
    prompts = PromptBuilder(loaded.tokenizer)
    plain = Decoder(loaded.model, loaded.tokenizer, prompts.stop_ids, reuse_kv=False, screen_head=False)
    screened = Decoder(loaded.model, loaded.tokenizer, prompts.stop_ids, reuse_kv=False, screen_head=False)
    screen = ScreenedArgmax.for_head(loaded.model.get_output_embeddings(), loaded.model.config.hidden_size)
    if screen is None:
        pytest.skip("no exact oneDNN int8 product in this build")
    screened.verify.screen = screen
    for text in ("def add(a, b):\n    ", "class Stack:\n    def push(self, item):\n        ", "import os\n"):
        prompt = prompts.build(text, "\n", 512).ids
        reference = plain.generate(prompt, 24).token_ids
        for mode in ("right", "partly", "wrong"):
            drafter = ScriptedDrafter([*prompt, *reference], mode, loaded.model.config.vocab_size)
            assert screened.generate(prompt, 24, drafter=drafter).token_ids == reference
    assert screen.rows_picked > 0


def test_a_screen_is_built_once_per_head_and_not_where_the_machine_said_it_does_not_pay():
    class Facts(dict):
        def put(self, key, value):
            self[key] = value

    weight = (torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(2)) * 0.05).to(torch.bfloat16)
    head = _packed_head(weight)  # a head no other test has screened
    _screen(weight)  # skips where this build has no exact int8 product
    facts = Facts()
    first = screen_for(head, HIDDEN, facts)
    assert screen_for(head, HIDDEN, facts) is first
    assert [type(value) for value in facts.values()] == [bool]  # timed once, and kept
    assert (first is not None) == next(iter(facts.values()))
    said_no = Facts({f"lm-head screen|{VOCAB}x{HIDDEN}|torch.bfloat16": False})
    assert screen_for(_packed_head(weight), HIDDEN, said_no) is None


def test_a_tied_embedding_equal_to_the_head_is_shared_and_any_other_tensor_is_not():
    weight = (torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(3)) * 0.05).to(torch.bfloat16)
    tied = weight.clone()
    shared = ScreenedArgmax.for_head(_packed_head(weight), HIDDEN, tied=tied)
    if shared is None:
        pytest.skip("no exact oneDNN int8 product in this build")
    assert shared.rows.data_ptr() == tied.data_ptr()  # no copy of its own
    other = tied.clone()
    other[17, 5] = other[17, 5] * 2 + 1  # one weight differs: not the head's
    for candidate in (other, tied.float(), tied[:-1]):
        screen = ScreenedArgmax.for_head(_packed_head(weight), HIDDEN, tied=candidate)
        assert screen.rows.data_ptr() != candidate.data_ptr()
    states = weight[torch.arange(0, VOCAB, 60)].float() * 40
    assert _tokens(shared, states.to(torch.bfloat16)) == _full(shared, states.to(torch.bfloat16))


def test_the_decoder_checks_candidates_on_a_tied_embedding_and_picks_as_the_full_product(tmp_path, monkeypatch):
    from lsp_server.engine import decoding, load, screened_argmax

    from tiny_model import build_tiny_model

    loaded = load(str(build_tiny_model(tmp_path, tied=True)), device="cpu", dtype="bfloat16")
    # The tiny head is too small for the int8 screen to pay; screen it anyway.
    monkeypatch.setattr(decoding, "this_machine", lambda: None)
    monkeypatch.setattr(screened_argmax, "screen_pays", lambda _screen, _states: True)
    screened = Decoder(loaded.model, loaded.tokenizer, frozenset())
    if screened.verify.screen is None:
        pytest.skip("no exact oneDNN int8 product in this build")
    assert screened.verify.screen.rows.data_ptr() == loaded.model.get_input_embeddings().weight.data_ptr()
    full = Decoder(loaded.model, loaded.tokenizer, frozenset(), screen_head=False)
    prompt = PromptBuilder(loaded.tokenizer).build("def mean(values):\n    return ", "", 256, fresh=True).ids
    assert screened.generate(prompt, 24).token_ids == full.generate(prompt, 24).token_ids
