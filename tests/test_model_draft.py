"""The model's float16 copy as a draft source: exact weights, an untouched cache, the
model's own tokens, chains only where they pay, and output that stays plain greedy output."""

from __future__ import annotations

import pytest
import torch

from lsp_server.engine.completer import build_drafter
from lsp_server.engine.decoding import Decoder
from lsp_server.engine.kv_cache import forward_with_cache, new_cache
from lsp_server.engine.linear import PackedLinear
from lsp_server.engine.prompt import PromptBuilder
from lsp_server.engine.speculation.budget import VerifyCostModel
from lsp_server.engine.speculation.draft_tree import DraftTree
from lsp_server.engine.speculation.drafter import DrafterConfig, SpeculativeDrafter
from lsp_server.engine.speculation.model_draft import Chain, HalfPrecisionDraft, ascii_vocabulary

PROMPT = "def total(values):\n    result = 0\n    for value in values:\n        result += value\n    return result\n\n\ndef mean(values):\n"


def _ids(loaded, text=PROMPT):
    return loaded.tokenizer(text)["input_ids"]


@pytest.fixture(scope="module")
def loaded_with_copy(tiny_model_dir):
    from lsp_server.engine import load

    return load(str(tiny_model_dir), device="cpu", dtype="float32", draft_copy=True)


def _greedy(loaded, ids, n):
    decoder = Decoder(loaded.model, loaded.tokenizer, frozenset(), reuse_kv=False)
    return decoder.generate(ids, n).token_ids


def test_packing_keeps_float16_copies_only_when_asked(tiny_model_dir, tiny_loaded):
    from lsp_server.engine import load

    with_copy = load(str(tiny_model_dir), device="cpu", dtype="float32", draft_copy=True)
    layer = next(m for m in with_copy.model.modules() if isinstance(m, PackedLinear) and not m.weight.numel())
    original = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    rows = torch.randn(3, layer.in_features)
    original.weight.data = layer.weight16.float()
    if layer.bias is not None:
        original.bias.data = layer.bias.detach()
    torch.testing.assert_close(layer(rows), original(rows), rtol=2e-3, atol=2e-3)
    assert HalfPrecisionDraft.worth_it(with_copy)
    assert not HalfPrecisionDraft.worth_it(tiny_loaded)      # packed without copies: nothing to copy from
    with pytest.raises(ValueError, match="draft_copy"):
        HalfPrecisionDraft(tiny_loaded.model.get_decoder(), tiny_loaded.model.get_output_embeddings())


def test_the_chain_is_the_models_greedy_continuation_and_leaves_the_cache_alone(loaded_with_copy):
    tiny_loaded = loaded_with_copy
    ids = _ids(tiny_loaded)
    truth = _greedy(tiny_loaded, ids, 12)
    assert 0 < len(ascii_vocabulary(tiny_loaded.tokenizer)) < len(tiny_loaded.tokenizer)  # bytes over 127 are not
    # A vocabulary that holds the greedy tokens among others: the copy's argmax over those
    # rows, mapped back to ids, is the model's token.
    vocabulary = sorted(set(truth) | set(range(0, len(tiny_loaded.tokenizer), 3)))
    draft = HalfPrecisionDraft(tiny_loaded.model.get_decoder(), tiny_loaded.model.get_output_embeddings(), vocabulary)
    assert draft.head.out_features == len(vocabulary)
    cache = new_cache()
    with torch.inference_mode():
        forward_with_cache(tiny_loaded.model.get_decoder(), cache, input_ids=torch.tensor([ids[:-1]]))
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    chain, runner_up = draft.chain(cache, ids[-1:], 12)
    # How long the chain runs depends on where the random model's float16 logits nearly tie,
    # which the CPU's kernels and the torch build move: the chain must be the model's own
    # tokens, however many.
    assert len(chain) >= 1 and chain == truth[: len(chain)]
    assert runner_up is not None or len(chain) == 12          # it ends at a near-tie or at the limit
    assert cache.get_seq_length() == len(ids) - 1
    for layer, (keys, values) in zip(cache.layers, before):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    assert draft.chain(cache, ids[-1:], 2).tokens == chain[:2]
    assert draft.chain(cache, ids[-1:], 0).tokens == []


def test_speculation_with_the_copy_is_plain_greedy_decoding_with_fewer_passes(loaded_with_copy):
    tiny_loaded = loaded_with_copy
    prompts = PromptBuilder(tiny_loaded.tokenizer)
    decoder = Decoder(tiny_loaded.model, tiny_loaded.tokenizer, prompts.stop_ids, reuse_kv=False)
    # A fixed tree size: on a model this small the copy's pass costs what the model's does,
    # and the sized drafter rightly drafts no chain at all (see the chain-length test).
    drafter = build_drafter(tiny_loaded, decoder, prompts,
                            DrafterConfig(use_cache=False, use_recycling=False, use_head=False, fixed_nodes=16))
    assert drafter.model_draft is not None
    for text in (PROMPT, "class Stack:\n    def push(self, item):\n        ", "import os\n\nPATH = "):
        ids = prompts.build(text, "", 256).ids
        plain = decoder.generate(ids, 24)
        fast = decoder.generate(ids, 24, drafter=drafter, language="python")
        assert fast.token_ids == plain.token_ids
        assert fast.forward_passes < plain.forward_passes
    assert drafter.stats.accepted_by_source[HalfPrecisionDraft.name] > 0
    assert drafter.stats.model_draft_tokens >= drafter.stats.accepted_by_source[HalfPrecisionDraft.name]


def test_only_a_float32_model_gets_a_copy(tiny_model_dir):
    from lsp_server.engine import load

    assert not HalfPrecisionDraft.worth_it(load(str(tiny_model_dir), device="cpu", dtype="bfloat16", draft_copy=True))


class _Chain:
    """A stand-in copy that drafts a fixed chain (the drafter's choices need no model)."""

    name = HalfPrecisionDraft.name

    def __init__(self):
        self.limits: list[int] = []

    def chain(self, cache, pending, limit):
        self.limits.append(limit)
        return Chain(list(range(100, 100 + limit)))


def _drafter(pass_seconds, step_seconds):
    """A drafter on a device whose pass costs ``pass_seconds(n)`` for ``n`` nodes and
    whose copy has drafted at ``step_seconds`` per token."""
    sizes = [0, 2, 4, 8, 16, 32, 64]
    cost = VerifyCostModel(sizes, [pass_seconds(n) for n in sizes])
    drafter = SpeculativeDrafter(cost, DrafterConfig(use_cache=False, use_recycling=False), model_draft=_Chain())
    drafter._model_chain(DraftTree.empty(), new_cache(), [1])
    drafter._draft_step.hits = step_seconds * drafter._draft_step.trials
    return drafter


def test_chain_length_follows_the_price_of_a_draft_token():
    cheap = _drafter(lambda n: 0.25 + 0.01 * n, step_seconds=0.1)
    dear = _drafter(lambda n: 0.25 + 0.01 * n, step_seconds=0.3)
    empty = DraftTree.empty()
    assert cheap.chain_limit(0.95, 0.95, empty) >= 6
    assert dear.chain_limit(0.95, 0.95, empty) == 0        # a draft token as dear as a pass never pays
    assert cheap.chain_limit(0.3, 0.5, empty) < cheap.chain_limit(0.95, 0.95, empty)
    sure = DraftTree([1, 2, 3, 4, 5, 6, 7, 8], [-1, 0, 1, 2, 3, 4, 5, 6], list(range(1, 9)), [0.99] * 8,
                     [frozenset({"cache"})] * 8)
    assert cheap.chain_limit(0.95, 0.95, sure) == 0         # the other sources already have it, for free
    cheap._throughput = [20.0, 1.0]                         # retrieval has lately decoded 20 tokens/s:
    assert cheap.chain_limit(0.95, 0.95, empty) == 0        # 10 tokens/s of drafting would slow it down
    cheap._throughput = [3.0, 1.0]
    assert cheap.chain_limit(0.95, 0.95, empty) >= 6


def test_a_near_tie_puts_both_tokens_in_the_tree():
    class _Tied(_Chain):
        def chain(self, cache, pending, limit):
            return Chain([7, 8, 9], runner_up=19)

    drafter = SpeculativeDrafter(None, DrafterConfig(use_cache=False, use_recycling=False), model_draft=_Tied())
    drafter.begin([1, 2, 3])
    tree = drafter.draft([1, 2, 3], new_cache(), [3])
    paths = {tuple(tree.tokens[node] for node in tree.path_to(index)) for index in range(len(tree))}
    assert {(7, 8, 9), (7, 8, 19)} <= paths


def test_the_self_draft_setting_turns_the_copy_and_its_memory_off(tiny_model_dir):
    from lsp_server.engine import build_engine

    on = build_engine(str(tiny_model_dir), "cpu", "float32")
    off = build_engine(str(tiny_model_dir), "cpu", "float32", self_draft=False)
    assert on.describe()["self_draft"] and not off.describe()["self_draft"]
    assert any(hasattr(m, "weight16") for m in on.loaded.model.modules())
    assert not any(hasattr(m, "weight16") for m in off.loaded.model.modules())
