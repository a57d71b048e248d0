"""Threshold tuning on replayed samples: global and per language, against the real line-voting rule."""

import numpy as np
from genguard_probe import probe_head

from lsp_server.genguard.train import (
    MIN_LANGUAGE_TUNE_SAMPLES,
    Dataset,
    language_thresholds,
    replay,
)

# Two lines of the requested code, then two lines of excess (calls: a stop right after a
# local assignment would be overruled by the tree-sitter veto, whatever the threshold).
PIECES = ["f(1)", "\n", "g(2)", "\n", "h(3)", "\n", "k(4)", "\n"]
LABELS = [0, 0, 0, 0, 1, 1, 1, 1]


class PieceTokenizer:
    """Token i is PIECES[i]; encoding counts one token per character (only lengths matter)."""

    def decode(self, ids) -> str:
        return "".join(PIECES[i] for i in ids)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": list(range(len(text)))}


def _dataset(inside_probability: dict[str, float], per_language: int) -> Dataset:
    """``per_language`` samples per language; code tokens score ``inside_probability``, excess 0.998."""
    features, labels, index, languages = [], [], [], []
    for language, probability in inside_probability.items():
        logit = float(np.log(probability / (1 - probability)))
        for _ in range(per_language):
            sample = len(languages)
            languages.append(language)
            for label in LABELS:
                features.append([0.0, logit if label == 0 else 6.0])
                labels.append(label)
                index.append(sample)
    n = len(languages)
    return Dataset(np.array(features, dtype=np.float16), np.array(labels, dtype=np.uint8),
                   np.tile(np.arange(len(PIECES)), n).astype(np.int32), np.array(index, dtype=np.int32),
                   np.array(languages), np.array([f"repo{i}" for i in range(n)]), np.array(["generated"] * n), [{}])


def test_each_language_gets_the_lowest_threshold_that_does_not_cut_its_code():
    data = _dataset({"python": 0.75, "javascript": 0.35}, MIN_LANGUAGE_TUNE_SAMPLES)
    everything = np.ones(data.samples, dtype=bool)
    thresholds = language_thresholds(probe_head(), PieceTokenizer(), data, everything, 0, max_early=0.0)
    assert thresholds == {"javascript": 0.4, "python": 0.8}


def test_a_language_with_few_tuning_samples_keeps_the_global_threshold():
    data = _dataset({"python": 0.75, "javascript": 0.35}, MIN_LANGUAGE_TUNE_SAMPLES - 1)
    everything = np.ones(data.samples, dtype=bool)
    assert language_thresholds(probe_head(), PieceTokenizer(), data, everything, 0, max_early=0.0) == {}


def test_replay_applies_per_language_thresholds():
    data = _dataset({"python": 0.75, "javascript": 0.35}, 3)
    everything = np.ones(data.samples, dtype=bool)
    shared = replay(probe_head(), PieceTokenizer(), data, everything, 0.5, 0)
    assert shared["early"] == 3 and shared["stopped"] == 3  # python's code outvotes 0.5
    split = replay(probe_head(), PieceTokenizer(), data, everything, 0.5, 0, per_language={"python": 0.8})
    assert split["early"] == 0 and split["stopped"] == 6 and split["tokens_late_median"] == 2
