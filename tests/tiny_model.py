"""A tiny, randomly initialised Qwen2 model with a real BPE tokenizer, built in seconds.

Fast tests exercise the real loading, prompting and decoding code on it; its output is
nonsense but deterministic, which is all that equality tests need.  The tokenizer is a
byte-level BPE of 800 tokens that knows Qwen's FIM tokens, trained once on this
repository's Python sources (December 3, 2026) and kept as ``data/tiny-tokenizer.json``.
It used to be trained afresh from the sources at every run, so any edit of any source file
changed every tiny-model test's tokens and, through the random model's near-ties, what some
of them saw (a half-precision draft's chain ran 2 tokens instead of 3 after a one-line edit).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|file_sep|>"]
TOKENIZER = Path(__file__).resolve().parent / "data" / "tiny-tokenizer.json"


def build_tiny_model(target: Path, seed: int = 0, tied: bool = False) -> Path:
    """Write a tokenizer + safetensors model folder to ``target`` and return it; ``tied``: the
    LM head shares the input embeddings' weight, as the default model's does."""
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    config = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=tied,
        eos_token_id=fast.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        # Mute whitespace and special tokens: the model then never stops by itself nor
        # leaves a line, so tests control the length with maxNewTokens and cancellation.
        for token_id in range(len(fast)):
            if token_id in fast.all_special_ids or not fast.decode([token_id]).strip():
                model.lm_head.weight[token_id].zero_()
    model.save_pretrained(target)
    fast.save_pretrained(target)
    return target
