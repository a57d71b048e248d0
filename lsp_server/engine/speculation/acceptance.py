"""Observed acceptance: decayed rates, and tree-node probabilities recalibrated to them.

The drafter turns each source's learned rates into draft masses and sums the masses of
the drafts through a node (``draft_tree.build_tree``).  The result ranks nodes well but is
not a calibrated probability: on HumanEval (40 problems, with the draft head) the nodes'
probabilities added up to 1,201 accepted tokens where 933 were, and nodes given 0.1-0.2
were accepted 9% of the time, 0.3-0.4 24%, 0.9-1 87%.  The tree size is chosen
from these numbers (``budget.best_prefix``) and the verifier decides from them which
logits to compute up front (``verify.ROW_WORTH``), so an overstatement buys nodes and
rows that do not pay.  ``NodeCalibration`` maps a node's probability to how often nodes
with that probability were accepted lately, keeping their order.

Sources are not independent, and one map for all nodes cannot see it.  A datastore's
guess is mostly right where the draft head guessed the same, so the node it is right on
is one that several sources offered; alone, its nodes almost never are.  On HumanEval
164 (one run, current head), with one map: nodes that only the general-code datastore
offered were accepted 14 times out of 998 (their probabilities summed to 192), only the
preference cache 110 of 1,432 (337), only Token Recycling 85 of 1,111 (150), only the
head 962 of 5,209 (1,269); nodes the head and another source offered 2,466 of 5,009
(2,669).  ``SourceCalibration`` therefore keeps one map per set of sources offering a
node, and the tree is re-ranked by the mapped probabilities.  It learns from every node
of the built tree whose outcome the pass decided, not only the verified ones: a set whose
nodes were mapped too low to be verified would otherwise never be observed again.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence

from .isotonic import non_decreasing


class Rate:
    """A decayed estimate of a probability, starting from a prior worth a few observations."""

    def __init__(self, prior: float, strength: float = 4.0, decay: float = 0.98) -> None:
        self.hits = prior * strength
        self.trials = strength
        self.decay = decay

    def update(self, hit: float) -> None:
        """One observation: a hit (1) or miss (0), or a probability to average."""
        self.hits = self.hits * self.decay + hit
        self.trials = self.trials * self.decay + 1.0

    @property
    def value(self) -> float:
        return self.hits / self.trials


class NodeCalibration:
    """Per probability bucket, how often a verified node was accepted; applied as a
    strictly increasing piecewise-linear map through the bucket centres.

    Each bucket starts at its centre (no correction) with the weight of ``strength``
    observations; a tree pass observes all its nodes, so the low buckets learn within a
    few passes.  The learned values are made non-decreasing before use, and a tiny share
    of the raw probability is added, so nodes keep their order and ties stay broken.
    """

    _TIE_BREAK = 1e-6

    def __init__(self, buckets: int = 10, strength: float = 8.0, decay: float = 0.995) -> None:
        self.centres = [(index + 0.5) / buckets for index in range(buckets)]
        self.rates = [Rate(centre, strength, decay) for centre in self.centres]

    def _bucket(self, probability: float) -> int:
        return min(len(self.rates) - 1, max(0, int(probability * len(self.rates))))

    def _monotone_values(self) -> list[float]:
        """The buckets' rates made non-decreasing, weighted by their trials: a bucket seen less
        often, still near its prior, is pooled with its well-observed neighbours instead of
        holding them up."""
        return non_decreasing([rate.value for rate in self.rates], [rate.trials for rate in self.rates])

    def __call__(self, probabilities: Sequence[float]) -> list[float]:
        values = self._monotone_values()
        mapped = []
        for p in probabilities:
            right = bisect.bisect_left(self.centres, p)
            if right == 0:  # below the first centre: scale down toward 0
                value = values[0] * p / self.centres[0]
            elif right == len(self.centres):  # above the last centre: toward 1
                value = values[-1] + (1.0 - values[-1]) * (p - self.centres[-1]) / (1.0 - self.centres[-1])
            else:
                left = right - 1
                share = (p - self.centres[left]) / (self.centres[right] - self.centres[left])
                value = values[left] + (values[right] - values[left]) * share
            mapped.append(min(1.0, value) * (1.0 - self._TIE_BREAK) + self._TIE_BREAK * p)
        return mapped

    def add(self, probability: float, accepted: bool) -> None:
        """One node: its uncalibrated probability and whether the model accepted it."""
        self.rates[self._bucket(probability)].update(accepted)


class SourceCalibration:
    """One :class:`NodeCalibration` per set of sources that offered a node: what a node's
    probability is worth depends on who agreed on it (see the module docstring)."""

    def __init__(self) -> None:
        self.by_sources: dict[frozenset[str], NodeCalibration] = defaultdict(NodeCalibration)

    def __call__(self, probabilities: Sequence[float], sources: Sequence[frozenset[str]]) -> list[float]:
        mapped = [0.0] * len(probabilities)
        for offered, nodes in self._grouped(sources).items():
            for node, value in zip(nodes, self.by_sources[offered]([probabilities[node] for node in nodes])):
                mapped[node] = value
        return mapped

    def observe(self, probabilities: Sequence[float], sources: Sequence[frozenset[str]],
                outcomes: Sequence[bool | None]) -> None:
        """Nodes of one pass's tree: their uncalibrated probabilities, who offered each, and
        whether the model accepted them or would have (``DraftTree.outcomes``; None: unknown)."""
        for probability, offered, outcome in zip(probabilities, sources, outcomes):
            if outcome is not None:
                self.by_sources[offered].add(probability, outcome)

    @staticmethod
    def _grouped(sources: Sequence[frozenset[str]]) -> dict[frozenset[str], list[int]]:
        groups: dict[frozenset[str], list[int]] = defaultdict(list)
        for node, offered in enumerate(sources):
            groups[offered].append(node)
        return groups
