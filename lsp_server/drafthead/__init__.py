"""The learned draft head: guesses the token after the model's own next token, from its hidden state.

- ``head``: the residual MLP, its safetensors file and its lookup in the cache dir;
- ``corpus``: ``swiftguard drafthead build-data``, the states of windows of real files;
- ``train`` / ``cli``: ``swiftguard drafthead train`` on those shards or GenGuard's.
"""
