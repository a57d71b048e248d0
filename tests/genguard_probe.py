"""A hand-set GenGuard head for rule tests: its stop probability is readable off the state."""

import torch

from lsp_server.genguard import GuardHead


def probe_head() -> GuardHead:
    """A 2-d head whose stop logit minus continue logit is the state's second coordinate:
    the stop probability of state (0, v) is sigmoid(v)."""
    head = GuardHead(2)
    with torch.no_grad():
        head.out.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
        head.out.bias.zero_()
    return head
