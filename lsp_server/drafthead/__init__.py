"""The learned draft head: guesses the token after the model's own next token, from its hidden state.

- ``head``: the block (attention over earlier positions, then an MLP), its safetensors file
  and its lookup in the cache dir;
- ``corpus``: ``swiftguard drafthead build-data``, the states of windows of real files;
- ``train`` / ``cli``: ``swiftguard drafthead train`` on those shards or GenGuard's.
"""

DRAFT_LEVELS = 3
"""Tokens ahead the engine drafts with a head, and the steps training unrolls it by default:
a level beyond the trained steps guesses from states the head never learned to continue
(HumanEval 164: training 3 steps instead of 2 took 1.7% fewer passes, medians of 4 and 2
runs; a fourth drafted level saved 0.6% of the passes, ~1.7 s, and cost 5.8 s of head time)."""

TRAIN_LR = 2e-3
"""Peak learning rate of a head trained from scratch (the one-cycle schedule's)."""
