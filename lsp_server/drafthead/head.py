"""The learned draft head: a guess of the token after the one the model just chose.

Every verification pass ends on the model's own next token ``b`` (certain, but not yet
fed) and the final-norm hidden state ``h`` that chose it.  Retrieval and Token Recycling
guess the token after ``b`` from text alone and were right a third of the time on
HumanEval; most passes then accepted nothing.  This head looks at ``h`` as well: one small
transformer block maps ``(h, embedding(b))`` to a predicted next hidden state, scored
against the model's own LM-head rows for the ``vocab`` tokens it knows (the most frequent
ones of its training data).  Its attention reads the same pairs at up to ``context``
earlier positions (what was fed before, and the states the model had there), so it can
see, say, a name the code used a line ago; ``context`` 0 leaves the block without
attention (the residual MLP of earlier heads).  On the same data and training budget
(half an epoch, three steps unrolled, held-out generations) the first guess was the
model's pick 49.3% of the time with 128 positions of context against 46.9% without, the
second 38.7% against 35.6%, the third 34.1% against 30.7%.

A pass runs it three levels deep (the block and one ``vocab x hidden`` product per level),
and it only proposes: the verifier still decides, so output is unchanged whatever it
guesses.

Weights are safetensors with string metadata (base model id, hidden size, tokenizer hash,
training summary) like GenGuard's heads, so a head is only used with its own model.  They
are not shipped in the package (about 13 MB for the default model): ``swiftguard
drafthead train`` writes them into the cache dir, where the engine looks them up by model
name.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..genguard.head import HeadError, header_metadata, model_key, tokenizer_hash
from ..paths import cache_root

FORMAT = "swiftguard-draft-head-2"
"""Format 1 (the MLP-only head, no ``context``) is refused: retrain with ``drafthead train``."""
HEAD_DIM = 64
"""Attention head size (the default model's own); a smaller model's block uses one head."""


def head_path_for(model_name: str, directory: Path | None = None) -> Path:
    """Where the draft head of ``model_name`` is kept (whether or not it exists): the cache dir by default."""
    return (directory or cache_root() / "drafthead") / f"{model_key(model_name)}.safetensors"


def shard_dir(model_name: str) -> Path:
    """Where builds keep the shards of ``model_name``'s head (its generations feed the datastore
    too: ``datastore.generations``)."""
    return cache_root() / "drafthead" / "shards" / model_key(model_name)


@dataclass
class DraftHeadInfo:
    base_model: str
    hidden_size: int
    tokenizer_hash: str
    width: int
    context: int = 0
    """Earlier positions the head attends to (0: none)."""
    training: dict[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "base_model": self.base_model, "hidden_size": str(self.hidden_size),
                "tokenizer_hash": self.tokenizer_hash, "width": str(self.width), "context": str(self.context),
                "training": json.dumps(self.training, sort_keys=True)}

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None, path: Path) -> DraftHeadInfo:
        if meta and meta.get("format") == "swiftguard-draft-head-1":
            raise HeadError(f"{path} is a draft head of an older format (no context attention): "
                            "train a new one with `swiftguard drafthead train` or `build`")
        if not meta or meta.get("format") != FORMAT:
            raise HeadError(f"{path} is not a draft head (metadata format {None if not meta else meta.get('format')!r})")
        try:
            return cls(meta["base_model"], int(meta["hidden_size"]), meta["tokenizer_hash"], int(meta["width"]),
                       int(meta["context"]), json.loads(meta.get("training", "{}")))
        except (KeyError, ValueError) as exc:
            raise HeadError(f"{path}: damaged draft-head metadata: {exc}") from exc


@functools.cache
def _frequencies(half: int, device: torch.device) -> torch.Tensor:
    """Rotation speeds of the rotary embedding's ``half`` pairs of features (made once: drafting
    rotates a few rows per level, where building this table would cost about as much)."""
    return 1.0 / (10000 ** (torch.arange(half, device=device, dtype=torch.float32) / half))


def rotate(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``x`` [..., T, head_dim] at ``positions`` [T]: attention
    scores then depend on how far apart two positions are, not where they sit, so a head
    trained on windows reads the same at any depth of a long document."""
    half = x.shape[-1] // 2
    angles = positions.to(torch.float32)[:, None] * _frequencies(half, x.device)[None]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def _normed(norm: torch.nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` in the norm weight's dtype.  Training runs the products under bf16 autocast
    with float32 weights, and a bf16 input beside a float32 weight sends RMSNorm to its unfused
    path with a warning at every build; at run time the head is all in the model's dtype and
    this changes nothing."""
    return norm(x.to(norm.weight.dtype))


class DraftHead(torch.nn.Module):
    """(h_t, embedding of token t+1, the same pairs at earlier positions) -> predicted
    final-norm hidden state at t+1.

    Used in three steps so that training (whole windows, ``drafthead.train``) and drafting
    (one position or tree node at a time, ``engine.speculation.head_drafts``) share it:
    ``fuse`` the inputs, ``project`` them to queries, keys and values, ``finish`` with the
    attention's output.
    """

    def __init__(self, hidden_size: int, width: int, vocab: torch.Tensor, context: int = 0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.width = width
        self.context = context
        self.heads = hidden_size // HEAD_DIM if hidden_size % HEAD_DIM == 0 else 1
        self.fuse_layer = torch.nn.Linear(2 * hidden_size, hidden_size)
        if context:
            self.attention_norm = torch.nn.RMSNorm(hidden_size, eps=1e-6)
            self.qkv = torch.nn.Linear(hidden_size, 3 * hidden_size)
            self.attention_out = torch.nn.Linear(hidden_size, hidden_size, bias=False)
        self.mlp_norm = torch.nn.RMSNorm(hidden_size, eps=1e-6)
        self.up = torch.nn.Linear(hidden_size, width)
        self.down = torch.nn.Linear(width, hidden_size)
        self.register_buffer("vocab", vocab.to(torch.int64))
        """The token ids the head can propose, in the order of its score rows."""

    def fuse(self, hidden: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        return self.fuse_layer(torch.cat([hidden, embedded], dim=-1))

    def project(self, fused: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values [..., heads, T, head_dim] of ``fused`` [..., T, hidden] (a head with context only)."""
        *batch, length, _ = fused.shape
        qkv = self.qkv(_normed(self.attention_norm, fused)).view(*batch, length, 3, self.heads, -1)
        query, key, value = (qkv.select(-3, part).transpose(-3, -2) for part in range(3))
        return rotate(query, positions), rotate(key, positions), value

    def finish(self, hidden: torch.Tensor, fused: torch.Tensor, attended: torch.Tensor | None) -> torch.Tensor:
        """The predicted state from the fused inputs and the attention's output [..., heads, T, head_dim]."""
        if attended is not None:
            fused = fused + self.attention_out(attended.transpose(-3, -2).flatten(-2))
        fused = fused + self.down(torch.nn.functional.silu(self.up(_normed(self.mlp_norm, fused))))
        return hidden + fused

    def forward(self, hidden: torch.Tensor, embedded: torch.Tensor, depth: int = 1) -> list[torch.Tensor]:
        """Predicted states [batch, T, hidden] for steps 1..depth of windows of consecutive true
        positions (the training form).

        Step one reads the true states.  Step ``k`` at position ``i`` starts from the state step
        ``k - 1`` predicted at ``i - 1`` (and the token really fed at ``i``), as drafting does
        once the head's earlier guesses were right; its attention sees what drafting sees: the
        true positions up to ``i - k + 1``, then the keys of the earlier steps' guesses on its
        own path (``unrolled_mask``).
        """
        length = hidden.shape[-2]
        positions = torch.arange(length, device=hidden.device)
        states: list[torch.Tensor] = []
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        previous = hidden
        for step in range(1, depth + 1):
            if states:
                previous = torch.cat([states[-1][:, :1], states[-1][:, :-1]], dim=1)
            fused = self.fuse(previous, embedded)
            attended = None
            if self.context:
                query, key, value = self.project(fused, positions)
                keys.append(key)
                values.append(value)
                attended = torch.nn.functional.scaled_dot_product_attention(
                    query, torch.cat(keys, dim=-2), torch.cat(values, dim=-2),
                    attn_mask=unrolled_mask(length, step).to(hidden.device))
            states.append(self.finish(previous, fused, attended))
        return states


def unrolled_mask(length: int, step: int) -> torch.Tensor:
    """[length, step * length]: which keys step ``step`` at position ``i`` may attend to, the keys
    laid out as [true; step 2's; ...; this step's]: true positions up to ``i - step + 1`` and,
    of step ``s``'s keys, the one at ``i - (step - s)`` (the guess before it on its path).
    Step one is plain causal attention."""
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None]
    return torch.cat([j <= i - step + 1] + [j == i - (step - s) for s in range(2, step + 1)], dim=1)


@torch.no_grad()
def score_rows(lm_head: torch.nn.Module, vocab: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """The LM head's weight rows for ``vocab`` ([len(vocab), hidden]), exactly.

    They are recovered by multiplying the identity: an LM head packed for oneDNN
    (``engine.linear``) keeps no plain weight, and each product of a one-hot row is a
    single weight, so no rounding can creep in.
    """
    parameter = next(lm_head.parameters())
    columns = lm_head(torch.eye(hidden_size, dtype=parameter.dtype, device=parameter.device))
    return columns[:, vocab.to(columns.device)].T.contiguous()


def save_draft_head(path: Path, head: DraftHead, info: DraftHeadInfo) -> None:
    """Weights in bfloat16 (half the file; the head runs in the model's dtype anyway), vocab as int64."""
    tensors = {name: (tensor if name == "vocab" else tensor.to(torch.bfloat16)).detach().contiguous().cpu()
               for name, tensor in head.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=info.to_metadata())


def read_head_info(path: Path) -> DraftHeadInfo:
    """A head's metadata, without its weights."""
    return DraftHeadInfo.from_metadata(header_metadata(path, "draft head"), path)


def load_draft_head(path: Path, hidden_size: int, tokenizer_key: str) -> tuple[DraftHead, DraftHeadInfo]:
    """Load a head for a model with ``hidden_size`` and tokenizer; refuse one trained for another model."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            info = DraftHeadInfo.from_metadata(handle.metadata(), path)
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (OSError, SafetensorError) as exc:
        raise HeadError(f"cannot read draft head {path}: {exc}") from exc
    if info.hidden_size != hidden_size:
        raise HeadError(f"draft head {path.name} was trained for {info.base_model} (hidden size {info.hidden_size}); "
                        f"the loaded model has hidden size {hidden_size}: refusing to use it")
    if info.tokenizer_hash != tokenizer_key:
        raise HeadError(f"draft head {path.name} was trained with another tokenizer: refusing to use it")
    if "vocab" not in tensors:
        raise HeadError(f"draft head {path} has no vocab tensor")
    head = DraftHead(hidden_size, info.width, tensors["vocab"], info.context)
    try:
        head.load_state_dict({name: tensor.float() if name != "vocab" else tensor for name, tensor in tensors.items()})
    except RuntimeError as exc:
        raise HeadError(f"draft head {path} has tensors that do not fit its metadata: {exc}") from exc
    return head.eval(), info


def find_draft_head(model_name: str, hidden_size: int, tokenizer: Any,
                    directory: Path | None = None) -> tuple[DraftHead | None, str]:
    """The trained head for the loaded model (or None) and a line for status saying which or why not."""
    path = head_path_for(model_name, directory)
    if not path.is_file():
        return None, f"no draft head for {model_name} (train one: swiftguard drafthead build-data, then train)"
    try:
        head, _info = load_draft_head(path, hidden_size, tokenizer_hash(tokenizer))
    except HeadError as exc:
        return None, str(exc)
    return head, f"draft head {path.name} ({len(head.vocab)} tokens)"
