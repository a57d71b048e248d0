"""Draft sources and tree sizing: the parts of speculation that need no model."""

from __future__ import annotations

import torch

from lsp_server.engine.speculation.budget import VerifyCostModel, best_prefix
from lsp_server.engine.speculation.preference_cache import PreferenceCache
from lsp_server.engine.speculation.token_recycling import TokenRecycler


def test_preference_cache_prefers_the_longest_matching_context():
    cache = PreferenceCache()
    cache.add([1, 2, 3], [10, 11])
    cache.add([9, 9, 2, 3], [20, 21])
    drafts = cache.drafts([7, 9, 9, 2, 3])
    assert [d[0] for d in drafts] == [(20, 21)]          # the 4-token match wins over the 2-token one
    assert cache.drafts([5, 2, 3]) and not cache.drafts([5, 6])


def test_preference_cache_is_bounded_and_persists(tmp_path):
    cache = PreferenceCache(max_keys=50)
    cache.add_block(list(range(100)))
    assert len(cache) == 50
    path = tmp_path / "cache.json"
    cache.save(path)
    again = PreferenceCache(max_keys=50)
    again.load(path)
    assert again.drafts([96, 97]) == cache.drafts([96, 97]) == [((98, 99), 1.0, "cache")]
    path.write_text("{not json")
    broken = PreferenceCache()
    broken.load(path)
    assert len(broken) == 0
    broken.load(tmp_path / "missing.json")
    assert len(broken) == 0


def test_token_recycler_grows_chains_from_remembered_top_k():
    recycler = TokenRecycler(top_k=2, depth=3, breadth=(2, 1, 1))
    logits = torch.zeros(3, 10)
    logits[0, 4], logits[0, 5] = 2.0, 1.0   # after token 1: 4, then 5
    logits[1, 6] = 3.0                       # after token 4: 6
    logits[2, 7] = 3.0                       # after token 6: 7
    recycler.observe([1, 4, 6], logits)
    drafts = recycler.drafts([0, 1])
    assert drafts[0] == ((4, 6, 7), 1.0, "recycle")
    assert any(tokens[0] == 5 for tokens, _, _ in drafts)
    assert recycler.drafts([]) == [] and recycler.drafts([3]) == []


def test_cost_model_is_monotone_and_interpolates():
    model = VerifyCostModel([0, 8, 16], [0.05, 0.04, 0.08])
    assert model.seconds == [0.05, 0.05, 0.08]
    assert model(12) == 0.065 and model(32) == 0.14


def test_best_prefix_follows_the_device():
    probabilities = [0.9, 0.8, 0.5, 0.2, 0.1, 0.05]
    flat = VerifyCostModel([0, 64], [0.05, 0.0501])       # a GPU: nodes are free
    steep = VerifyCostModel([0, 1, 64], [0.05, 0.08, 2.0])  # a slow CPU: each node costs
    assert best_prefix(probabilities, flat, 64) == 6
    assert best_prefix(probabilities, steep, 64) < 6
    assert best_prefix([], steep, 64) == 0


def test_online_cost_learns_the_slope_of_long_contexts():
    from lsp_server.engine.speculation.budget import OnlineCost

    calibrated = VerifyCostModel([0, 64], [0.05, 0.06])  # measured at a short context: nodes look free
    cost = OnlineCost(calibrated)
    assert cost(32) == calibrated(32)
    for nodes in [0, 8, 16, 32, 4, 24] * 3:       # real passes: 3 ms per node
        cost.observe(nodes, 0.1 + 0.003 * nodes)
    assert abs(cost(40) - 0.22) < 1e-6
    probabilities = [0.5, 0.3, 0.1, 0.05] + [0.02] * 30
    assert best_prefix(probabilities, cost, 64) < best_prefix(probabilities, calibrated, 64)
