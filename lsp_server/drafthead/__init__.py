"""The learned draft head: guesses the token after the model's own next token, from its hidden state.

- ``head``: the residual MLP, its safetensors file and the lookup of the shipped head;
- ``train`` / ``cli``: ``swiftguard drafthead train`` on ``swiftguard genguard build-data`` shards.
"""
