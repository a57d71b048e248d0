"""Draft sources and tree sizing: the parts of speculation that need no model."""

from __future__ import annotations

import random

import pytest
import torch

from lsp_server.datastore.types import Candidate
from lsp_server.engine.speculation.budget import VerifyCostModel, best_prefix
from lsp_server.engine.speculation.draft_tree import Draft, DraftTree, build_tree
from lsp_server.engine.speculation.drafter import DrafterConfig, SpeculativeDrafter
from lsp_server.engine.speculation.preference_cache import PreferenceCache
from lsp_server.engine.speculation.token_recycling import CHUNK, TokenRecycler, top_indices
from lsp_server.engine.speculation.verify import Verified


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
    assert again.drafts([96, 97]) == cache.drafts([96, 97]) == [Draft((98, 99), 1.0, "cache", 2)]
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
    assert drafts[0] == Draft((4, 6, 7), 1.0, "recycle")
    assert any(draft.tokens[0] == 5 for draft in drafts)
    assert recycler.drafts([]) == [] and recycler.drafts([3]) == []


@pytest.mark.parametrize("columns", [9 * CHUNK, 20 * CHUNK, 20 * CHUNK + 37, 151_936])  # all in two stages
def test_top_indices_give_the_values_of_topk(columns):
    generator = torch.Generator().manual_seed(columns)
    for trial in range(30):
        logits = torch.randn(3, columns, generator=generator)
        if trial % 3 == 0:
            logits = (logits * 2).round()  # many ties
        if trial % 5 == 0:
            logits[:, -1] = 100.0  # the best in the columns after the last whole block
        top = top_indices(logits, 4)
        assert top.shape == (3, 4)
        assert torch.equal(logits.gather(1, top), logits.topk(4, dim=-1).values)
        assert all(len(set(row)) == 4 for row in top.tolist())


def test_cost_model_is_monotone_and_interpolates():
    model = VerifyCostModel([0, 8, 16], [0.05, 0.04, 0.08])
    assert model.seconds == pytest.approx([0.045, 0.045, 0.08])
    assert model(12) == pytest.approx(0.0625) and model(32) == pytest.approx(0.15)
    spiked = VerifyCostModel([0, 1, 2, 3, 4], [0.05, 0.09, 0.06, 0.07, 0.10])  # one slow sample at 1 node
    assert spiked.seconds == pytest.approx([0.05, 0.22 / 3, 0.22 / 3, 0.22 / 3, 0.10])  # pooled, not held up at 0.09


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


def test_online_cost_keeps_the_shape_of_the_calibrated_curve():
    from lsp_server.engine.speculation.budget import OnlineCost

    # This CPU: flat up to 5 nodes, then a step.  Real passes run 10% slower than calibrated.
    calibrated = VerifyCostModel([0, 1, 2, 3, 4, 5, 6, 8, 16], [0.078, 0.078, 0.078, 0.079, 0.080, 0.081, 0.088,
                                                                 0.101, 0.151])
    cost = OnlineCost(calibrated)
    for nodes in [2, 2, 3, 2, 6, 3, 8, 2, 3, 7] * 3:
        cost.observe(nodes, 1.1 * calibrated(nodes))
    assert [cost(n) for n in (3, 5, 8, 16)] == pytest.approx([1.1 * calibrated(n) for n in (3, 5, 8, 16)])
    # A line through those sizes would price each node at about 3.5 ms and stop at 3 nodes.
    assert best_prefix([0.6, 0.4, 0.2, 0.1, 0.08], cost, 64) == 5


def test_online_cost_keeps_the_step_between_plain_and_tree_passes():
    from lsp_server.engine.speculation.budget import OnlineCost

    # fp32 here: a plain pass 110 ms, any tree pass ~286 ms: a line through both would say 2 nodes cost ~150 ms.
    calibrated = VerifyCostModel([0, 2, 16, 64], [0.11, 0.286, 0.29, 0.48])
    cost = OnlineCost(calibrated)
    for _ in range(10):
        cost.observe(0, 0.12)
        cost.observe(6, 0.30)
    assert abs(cost(0) - 0.12) < 1e-9 and cost(2) > 0.28
    assert best_prefix([0.5, 0.4, 0.3], cost, 64) == 0  # 2.2 expected tokens do not pay for 2.5x the time
    assert best_prefix([0.95] + [0.9] * 8, cost, 64) > 0


def test_a_confident_draft_reaches_deeper_than_a_doubtful_one():
    sure = Draft((1, 2, 3, 4, 5, 6), 0.4, "document", 16, continuation=0.95)
    doubtful = Draft((7, 8, 9, 10, 11, 12), 0.4, "general", 2, continuation=0.4)
    tree = build_tree([sure, doubtful], max_nodes=7)
    assert [tree.tokens[i] for i in range(len(tree)) if "document" in tree.sources[i]] == [1, 2, 3, 4, 5, 6]
    assert [tree.tokens[i] for i in range(len(tree)) if "general" in tree.sources[i]] == [7]
    agreed = build_tree([Draft((1, 2), 0.7, "a"), Draft((1, 3), 0.6, "b")], max_nodes=3)
    assert agreed.probabilities[0] == 1.0  # two sources agree on the first token: mass adds up, capped


class _KnownSource:
    """Two candidates per context: a long match that is the truth, a short match that is not."""

    name = "repo"

    def __init__(self, truth: list[int]) -> None:
        self.truth = truth

    def retrieve(self, context, span=16, max_candidates=64):
        ahead = self.truth[len(context) : len(context) + 8]
        wrong = tuple(t + 1000 for t in ahead)
        return [Candidate(tuple(ahead), 1.0, "repo", 12), Candidate(wrong, 3.0, "repo", 2)] if ahead else []


def _verify_against(truth: list[int], context: list[int], tree) -> Verified:
    """What greedy verification would accept if the model's output were ``truth``."""
    node, path, accepted = -1, [], []
    position = len(context)
    while position < len(truth):
        accepted.append(truth[position])
        child = next((i for i, (p, t) in enumerate(zip(tree.parents, tree.tokens))
                      if p == node and t == truth[position]), None)
        if child is None:
            break
        path.append(child)
        node, position = child, position + 1
    return Verified(accepted, torch.zeros(len(accepted), 1), path, torch.zeros(len(accepted), 1))


def test_drafter_learns_rates_per_source_and_match_length():
    truth = list(range(100, 400))
    drafter = SpeculativeDrafter(None, DrafterConfig(max_nodes=12, use_cache=False, use_recycling=False),
                                 retrieval=[_KnownSource(truth)])
    prompt = truth[:20]
    drafter.begin(prompt)
    context = list(prompt)
    while len(context) < 260:
        tree = drafter.draft(context)
        verified = _verify_against(truth, context, tree)
        drafter.observe(context, tree, verified, 0.05)
        context += verified.accepted
    rates = drafter.stats.as_json()["rates_by_match_length"]
    assert rates["repo/16"]["first_token"] > 0.9 and rates["repo/16"]["continuation"] > 0.9
    assert rates["repo/2"]["first_token"] < 0.1
    # Once learned, the tree follows the reliable long match deep and nearly ignores the other.
    tree = drafter.draft(context)
    assert tree.tokens[:8] == truth[len(context) : len(context) + 8]


def test_the_prompt_pass_gets_a_tree_unless_switched_off():
    truth = list(range(100, 400))
    for prompt_pass in (True, False):
        drafter = SpeculativeDrafter(None, DrafterConfig(use_cache=False, use_recycling=False, prompt_pass=prompt_pass),
                                     retrieval=[_KnownSource(truth)])
        drafter.begin(truth[:20])
        assert (drafter.draft(truth[:20]).tokens[:4] == truth[20:24]) == prompt_pass
        assert drafter.draft(truth[:21]).tokens[:4] == truth[21:25]  # decoding passes draft either way


def test_a_long_prompts_tree_is_verified_only_where_it_pays_for_another_read_of_the_weights(monkeypatch):
    """On a prompt's pass the tree's rows take calls of their own (a CPU with split calls): its
    expected tokens must save more time, at the rate decoding goes, than about a decoding pass."""
    truth = list(range(100, 700))
    cost = VerifyCostModel([0, 1, 64], [0.06, 0.065, 0.1])
    drafter = SpeculativeDrafter(cost, DrafterConfig(use_cache=False, use_recycling=False),
                                 retrieval=[_KnownSource(truth)])
    drafter.prompt_trees_apart = True
    prompt = truth[:300]  # a new request: every token fed on its pass, more than linear.PROMPT_ROWS
    drafter.begin(prompt)
    assert drafter.draft(prompt, pending=prompt).tokens[:4] == truth[300:304]  # nothing measured yet: kept
    context = list(prompt)
    while len(context) < 400:  # the source's long matches prove right
        tree = drafter.draft(context)
        verified = _verify_against(truth, context, tree)
        drafter.observe(context, tree, verified, 0.06)
        context += verified.accepted
    second = truth[:320]
    drafter.begin(second)
    sized = drafter.draft(second, pending=second[-2:])  # most of it reused from the cache: a short pass
    assert len(sized) >= 8 and sized.tokens[:4] == truth[320:324]
    monkeypatch.setattr(drafter, "throughput", lambda: 500.0)  # decoding yields 8 tokens in 16 ms
    assert not len(drafter.draft(second, pending=second))
    monkeypatch.setattr(drafter, "throughput", lambda: 10.0)  # 8 tokens take 0.8 s: worth a pass
    assert drafter.draft(second, pending=second).tokens[:8] == truth[320:328]


class _CountingSource:
    """Finds nothing, and counts how often it was asked."""

    name = "repo"

    def __init__(self) -> None:
        self.asked = 0

    def retrieve(self, context, span=16, max_candidates=64):
        self.asked += 1
        return []


def test_timing_control_skips_a_bigram_that_found_nothing_in_the_same_language():
    source = _CountingSource()
    drafter = SpeculativeDrafter(None, DrafterConfig(use_cache=False, use_recycling=False), retrieval=[source])
    drafter.begin([1, 2, 3], "go")
    drafter.draft([1, 2, 3, 4, 5])
    drafter.draft([1, 2, 3, 7, 4, 5])  # same last bigram: the miss table skips the search
    assert source.asked == 1 and drafter.stats.retrieval_skipped == 1
    drafter.begin([1, 2, 3], "python")  # another language drafts from other sources: search again
    drafter.draft([1, 2, 3, 4, 5])
    assert source.asked == 2
    drafter.begin([1, 2, 3], "go")
    drafter.draft([1, 2, 3, 4, 5])
    assert source.asked == 2 and drafter.stats.retrieval_skipped == 2
    plain = SpeculativeDrafter(None, DrafterConfig(use_cache=False, use_recycling=False, timing_control=False),
                               retrieval=[source])
    plain.begin([1, 2, 3])
    plain.draft([1, 2, 3, 4, 5])
    plain.draft([1, 2, 3, 4, 5])
    assert source.asked == 4


class _ContinuesAfterFive:
    """A source that knows what follows token 5, but cannot guess 5 itself."""

    name = "repo"

    def retrieve(self, context, span=16, max_candidates=64):
        return [Candidate((7, 8, 9), 1.0, "repo", 8)] if context[-1] == 5 else []


class _GuessesFive:
    name = "head"

    def begin(self, prompt) -> None:
        pass

    def extend(self, states, tokens, start=None) -> None:
        pass

    def tree(self):
        from lsp_server.engine.speculation.head_drafts import HeadNode

        return [HeadNode((5,), 0.9, 0.9)]


def test_sources_continue_the_head_guess_they_could_not_make():
    trees = {}
    for lookahead in (True, False):
        config = DrafterConfig(max_nodes=8, use_cache=False, use_recycling=False, head_lookahead=lookahead)
        drafter = SpeculativeDrafter(None, config, retrieval=[_ContinuesAfterFive()], head=_GuessesFive())
        drafter.begin([1, 2, 3])
        drafter.observe([1, 2, 3], build_tree([], 8), Verified([4], torch.zeros(1, 4), [], torch.zeros(1, 10)), 0.05)
        trees[lookahead] = drafter.draft([1, 2, 3, 4])
    assert trees[True].tokens == [5, 7, 8, 9] and trees[True].parents == [-1, 0, 1, 2]
    assert "repo" in trees[True].sources[1]
    assert trees[False].tokens == [5]


def test_node_calibration_learns_observed_acceptance_and_keeps_the_order():
    from lsp_server.engine.speculation.acceptance import NodeCalibration

    calibration = NodeCalibration()
    assert all(abs(a - b) < 1e-5 for a, b in zip(calibration([0.05, 0.35, 0.95]), [0.05, 0.35, 0.95]))
    rng = random.Random(0)
    for _ in range(400):  # nodes accepted half as often as their probability says
        probabilities = [rng.random() for _ in range(8)]
        for p in probabilities:
            calibration.add(p, rng.random() < p / 2)
    assert abs(calibration([0.35])[0] - 0.175) < 0.05
    assert abs(calibration([0.85])[0] - 0.425) < 0.07
    raw = sorted(rng.random() for _ in range(200))
    mapped = calibration(raw)
    assert all(a < b for a, b in zip(mapped, mapped[1:]))  # strictly increasing: the tree's order is kept
    assert all(0.0 <= p <= 1.0 for p in mapped)


def test_a_reranked_tree_is_most_probable_first_and_every_prefix_is_a_tree():
    rng = random.Random(1)
    for _ in range(50):
        drafts = [Draft(tuple(rng.randrange(6) for _ in range(rng.randint(1, 5))), rng.random(), "s", continuation=0.7)
                  for _ in range(6)]
        tree = build_tree(drafts, 24)
        reranked, order = tree.reranked([rng.random() for _ in range(len(tree))])
        assert sorted(order) == list(range(len(tree)))
        assert all(parent < node for node, parent in enumerate(reranked.parents))  # parents first
        assert reranked.probabilities == sorted(reranked.probabilities, reverse=True)
        for node, old in enumerate(order):  # same node: token, depth, and its parent is the old parent
            assert reranked.tokens[node] == tree.tokens[old] and reranked.depths[node] == tree.depths[old]
            parent = reranked.parents[node]
            assert (order[parent] if parent != -1 else -1) == tree.parents[old]
            if parent != -1:
                assert reranked.probabilities[node] <= reranked.probabilities[parent]


def test_outcomes_follow_the_tokens_the_model_chose_verified_or_not():
    #        5 -> 6 -> 7        (nodes 0, 2, 4)
    # root -<      `-> 8        (node 3)
    #        9                  (node 1)
    tree = DraftTree([5, 9, 6, 8, 7], [-1, -1, 0, 0, 2], [1, 1, 2, 2, 3], [0.9, 0.5, 0.6, 0.3, 0.4], [frozenset()] * 5)
    assert tree.outcomes([5, 6]) == [True, False, True, False, None]  # past the model's last token: unknown
    assert tree.outcomes([5, 8, 1]) == [True, False, False, True, False]
    assert tree.outcomes([4]) == [False, False, False, False, False]


def test_nodes_that_only_an_echoing_source_offers_are_ranked_down_and_cut():
    """A source that is right only where another one says the same: its nodes alone never are."""
    cost = VerifyCostModel([0, 1, 64], [0.05, 0.052, 0.9])  # a node after the first costs ~13 ms
    drafter = SpeculativeDrafter(cost, DrafterConfig(max_nodes=32, use_cache=False, use_recycling=False,
                                                     use_head=False))
    right = lambda step: (step % 7,)  # noqa: E731  the model's next token
    first_sized = None
    for step in range(80):
        tokens = list(range(step + 5))
        wrong = (100 + step % 5,)
        drafts = [Draft(right(step), 0.45, "good", continuation=0.5), Draft(right(step), 0.2, "echo"),
                  Draft(wrong, 0.8, "echo", continuation=0.5), Draft((200,), 0.1, "good")]
        sized = drafter.size_tree(build_tree(drafts, 32))
        first_sized = first_sized or sized
        accepted = [sized.tokens.index(right(step)[0])] if right(step)[0] in sized.tokens[:len(sized)] else []
        verified = Verified([right(step)[0], 9], torch.zeros(2, 1), accepted, torch.zeros(2, 1))
        drafter.observe(tokens, sized, verified, cost(len(sized)))
    assert first_sized.sources[0] == frozenset({"echo"})  # at first its raw mass ranks it first
    assert sized.sources[0] == frozenset({"echo", "good"}) and len(sized) >= 1
    assert frozenset({"echo"}) not in sized.sources  # learned: alone it is never accepted
    calibration = drafter.stats.node_calibration
    alone, agreed = calibration([0.8, 0.65], [frozenset({"echo"}), frozenset({"echo", "good"})])  # as drafted
    assert alone < 0.3 < 0.7 < agreed  # learned from the built trees, also once its nodes were cut


def test_an_overconfident_source_gets_smaller_trees_once_its_nodes_are_seen_failing():
    """A source whose drafts are rarely right: the budget sizes its trees from what was accepted."""
    cost = VerifyCostModel([0, 1, 64], [0.05, 0.06, 0.25])
    sizes = {}
    for recalibrate in (False, True):
        drafter = SpeculativeDrafter(cost, DrafterConfig(max_nodes=32, use_cache=False, use_recycling=False,
                                                         use_head=False, recalibrate=recalibrate))
        trees = []
        for step in range(60):
            tokens = list(range(step + 5))
            tree = build_tree([Draft(tuple(range(1000 + 8 * k, 1008 + 8 * k)), 0.5, "overconfident",
                                     continuation=0.9) for k in range(3)], 32)
            sized = drafter.size_tree(tree)
            trees.append(len(sized))
            verified = Verified([7], torch.zeros(1, 1), [], torch.zeros(1, 1))  # the model wrote none of it
            drafter.observe(tokens, sized, verified, cost(len(sized)))
        sizes[recalibrate] = trees
    assert sizes[False][-1] == sizes[False][0] > 0
    assert sizes[True][-1] < sizes[False][-1]


def test_online_cost_keeps_a_step_beyond_the_trees_it_has_seen():
    from lsp_server.engine.speculation.budget import OnlineCost

    # AMX here: products split into 32-row calls, so 32 nodes (33 rows) cost a second call per layer.
    calibrated = VerifyCostModel([0, 16, 31, 32, 64], [0.063, 0.085, 0.087, 0.139, 0.207])
    cost = OnlineCost(calibrated)
    for nodes in [4, 8, 12, 16, 20, 24, 31] * 3:
        cost.observe(nodes, 0.07 + 0.0005 * nodes)
    assert abs(cost(24) - 0.082) < 0.001  # within what it has seen: the calibrated shape, fitted to the passes
    assert cost(48) > 0.07 + 0.0005 * 31 + 0.05  # beyond: the calibrated step, not the line's 0.094


@pytest.mark.parametrize("off_path", [True, False])
def test_token_recycling_learns_from_the_verified_nodes_off_the_accepted_path(off_path):
    """A node the model rejected still had its logits computed: what follows its token there."""
    drafter = SpeculativeDrafter(None, DrafterConfig(use_cache=False, recycle_off_path=off_path))
    drafter.begin([1, 2, 3])
    tree = build_tree([Draft((5, 6), 1.0, "x"), Draft((7,), 0.5, "x")], 8)  # nodes 5 -> 6, and 7
    vocab = 20
    logits = torch.zeros(2, vocab)
    logits[0, 5], logits[1, 9] = 1.0, 1.0  # the root's row picks 5; node 5's row picks 9 (not 6)
    rejected = torch.zeros(vocab)
    rejected[11] = 1.0  # the row of node 7, off the path: the model would write 11 after 7
    verified = Verified([5, 9], torch.zeros(2, 1), [tree.tokens.index(5)], logits, None, [(7, rejected)])
    drafter.observe([1, 2, 3], tree, verified, 0.05)
    recycled_after_seven = [draft.tokens[0] for draft in drafter.recycler.drafts([7])]
    if off_path:
        assert recycled_after_seven[0] == 11
    else:
        assert recycled_after_seven == []
    assert drafter.recycler.drafts([5])[0].tokens[0] == 9  # the accepted path's rows, as before
