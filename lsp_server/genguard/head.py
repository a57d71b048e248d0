"""The GenGuard classifier head and its weights file.

CodeFast's head is one linear layer ``hidden_size -> 2`` (continue / stop) on the base
model's final-norm hidden state; on CPU it costs one ``hidden_size x 2`` product per
token, nothing next to the model.  Weights are safetensors (never pickle) with string
metadata: the base model id, hidden size, tokenizer hash, threshold and a summary of the
training data, so that a head is only ever used with the model it was trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "genguard-1"
CONTINUE, STOP = 0, 1


class HeadError(ValueError):
    """A head file cannot be used (wrong model, wrong size, unreadable); the message is for the user."""


def tokenizer_hash(tokenizer: Any) -> str:
    """A short hash of the tokenizer's full definition: a head is tied to the token ids it was trained on."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(spec.encode("utf-8")).hexdigest()[:16]


def model_key(name: str) -> str:
    """``Qwen/Qwen2.5-Coder-0.5B-Instruct`` and ``qwen2.5-coder-0.5b-instruct`` are the same model."""
    return name.rstrip("/").split("/")[-1].lower()


@dataclass
class HeadInfo:
    """What a head file says about itself (all stored as safetensors string metadata)."""

    base_model: str
    hidden_size: int
    tokenizer_hash: str
    threshold: float = 0.5
    training: dict[str, Any] = field(default_factory=dict)
    """Summary of the training data and run (counts per language, sources, metrics)."""

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "base_model": self.base_model,
            "hidden_size": str(self.hidden_size),
            "tokenizer_hash": self.tokenizer_hash,
            "threshold": repr(float(self.threshold)),
            "training": json.dumps(self.training, sort_keys=True),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None, path: Path) -> HeadInfo:
        if not meta or meta.get("format") != FORMAT:
            raise HeadError(f"{path} is not a GenGuard head (metadata format {None if not meta else meta.get('format')!r})")
        try:
            return cls(meta["base_model"], int(meta["hidden_size"]), meta["tokenizer_hash"], float(meta["threshold"]),
                       json.loads(meta.get("training", "{}")))
        except (KeyError, ValueError) as exc:
            raise HeadError(f"{path}: damaged GenGuard metadata: {exc}") from exc


class GuardHead(torch.nn.Module):
    """hidden -> 2 logits; optionally one small hidden layer (``width`` > 0) before it."""

    def __init__(self, hidden_size: int, width: int = 0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.width = width
        if width:
            self.inner = torch.nn.Linear(hidden_size, width)
        self.out = torch.nn.Linear(width or hidden_size, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.float()
        if self.width:
            x = torch.nn.functional.gelu(self.inner(x))
        return self.out(x)

    @torch.inference_mode()
    def stop_probability(self, hidden: torch.Tensor | np.ndarray) -> np.ndarray:
        """P(stop) for each row of ``hidden`` ([n, hidden_size]), as float64 numpy."""
        x = torch.as_tensor(hidden)
        if x.ndim == 1:
            x = x[None]
        if x.shape[-1] != self.hidden_size:
            raise HeadError(f"hidden states have size {x.shape[-1]}, the GenGuard head expects {self.hidden_size}")
        return torch.softmax(self(x.to(self.out.weight.device)), dim=-1)[:, STOP].double().cpu().numpy()


def save_head(path: Path, head: GuardHead, info: HeadInfo) -> None:
    if info.hidden_size != head.hidden_size:
        raise HeadError(f"metadata says hidden size {info.hidden_size}, the head has {head.hidden_size}")
    tensors = {name: tensor.detach().float().contiguous().cpu() for name, tensor in head.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={**info.to_metadata(), "width": str(head.width)})


def header_metadata(path: Path, what: str) -> dict[str, str] | None:
    """A safetensors file's string metadata, read from its header alone; ``what`` names the file in errors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata()
    except (OSError, SafetensorError) as exc:
        raise HeadError(f"cannot read {what} {path}: {exc}") from exc


def read_info(path: Path) -> HeadInfo:
    """The metadata alone (cheap: the lookup reads every shipped head's header)."""
    return HeadInfo.from_metadata(header_metadata(path, "GenGuard head"), path)




def load_head(path: Path, hidden_size: int, tokenizer_key: str | None = None) -> tuple[GuardHead, HeadInfo]:
    """Load a head for a model with ``hidden_size``; refuse one trained for another model.

    A head trained on another model's hidden states would return confident nonsense, so a
    size (or tokenizer) mismatch is an error, not a warning.
    """
    info = read_info(path)
    if info.hidden_size != hidden_size:
        raise HeadError(
            f"GenGuard head {path.name} was trained for {info.base_model} (hidden size {info.hidden_size}); "
            f"the loaded model has hidden size {hidden_size}: refusing to use it"
        )
    if tokenizer_key is not None and info.tokenizer_hash != tokenizer_key:
        raise HeadError(
            f"GenGuard head {path.name} was trained with another tokenizer ({info.tokenizer_hash}, "
            f"loaded model: {tokenizer_key}): refusing to use it"
        )
    with safe_open(str(path), framework="pt") as handle:
        width = int((handle.metadata() or {}).get("width", "0"))
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    head = GuardHead(hidden_size, width)
    try:
        head.load_state_dict(tensors)
    except RuntimeError as exc:
        raise HeadError(f"GenGuard head {path} has tensors that do not fit its metadata: {exc}") from exc
    return head.eval(), info
