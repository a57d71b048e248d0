"""The learned draft head: guesses the token after the model's own next token, from its hidden state.

- ``head``: the residual MLP, its safetensors file and its lookup in the cache dir;
- ``train`` / ``cli``: ``swiftguard drafthead train`` on ``swiftguard genguard build-data`` shards.
"""
