"""The learned draft head: a guess of the token after the one the model just chose.

Every verification pass ends on the model's own next token ``b`` (certain, but not yet
fed) and the final-norm hidden state ``h`` that chose it.  Retrieval and Token Recycling
guess the token after ``b`` from text alone and were right a third of the time on
HumanEval; most passes then accepted nothing.  This head looks at ``h`` as well: a
residual MLP maps ``(h, embedding(b))`` to a predicted next hidden state, scored against
the model's own LM-head rows for the ``vocab`` tokens it knows (the most frequent ones of
its training data).  A pass runs it three levels deep (a small MLP and one ``vocab x
hidden`` product per level); with the drafts built from its guesses that took 7% of
speculation's time on HumanEval here (8.6 of ~123 ms per pass on a slow day), and it only
proposes: the verifier still decides, so output is unchanged whatever it guesses.

Weights are safetensors with string metadata (base model id, hidden size, tokenizer hash,
training summary) like GenGuard's heads, so a head is only used with its own model.  They
are not shipped in the package (5.6 MB for the default model): ``swiftguard drafthead
train`` writes them into the cache dir, where the engine looks them up by model name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..genguard.head import HeadError, header_metadata, model_key, tokenizer_hash
from ..paths import cache_root

FORMAT = "swiftguard-draft-head-1"


def head_path_for(model_name: str, directory: Path | None = None) -> Path:
    """Where the draft head of ``model_name`` is kept (whether or not it exists): the cache dir by default."""
    return (directory or cache_root() / "drafthead") / f"{model_key(model_name)}.safetensors"


@dataclass
class DraftHeadInfo:
    base_model: str
    hidden_size: int
    tokenizer_hash: str
    width: int
    training: dict[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "base_model": self.base_model, "hidden_size": str(self.hidden_size),
                "tokenizer_hash": self.tokenizer_hash, "width": str(self.width),
                "training": json.dumps(self.training, sort_keys=True)}

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None, path: Path) -> DraftHeadInfo:
        if not meta or meta.get("format") != FORMAT:
            raise HeadError(f"{path} is not a draft head (metadata format {None if not meta else meta.get('format')!r})")
        try:
            return cls(meta["base_model"], int(meta["hidden_size"]), meta["tokenizer_hash"], int(meta["width"]),
                       json.loads(meta.get("training", "{}")))
        except (KeyError, ValueError) as exc:
            raise HeadError(f"{path}: damaged draft-head metadata: {exc}") from exc


class DraftHead(torch.nn.Module):
    """(h_t, embedding of token t+1) -> predicted final-norm hidden state at t+1."""

    def __init__(self, hidden_size: int, width: int, vocab: torch.Tensor) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.width = width
        self.inner = torch.nn.Linear(2 * hidden_size, width)
        self.outer = torch.nn.Linear(width, hidden_size)
        self.register_buffer("vocab", vocab.to(torch.int64))
        """The token ids the head can propose, in the order of its score rows."""

    def forward(self, hidden: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        inner = torch.nn.functional.silu(self.inner(torch.cat([hidden, embedded], dim=-1)))
        return hidden + self.outer(inner)


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
    head = DraftHead(hidden_size, info.width, tensors["vocab"])
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
