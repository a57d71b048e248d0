"""A tiny, randomly initialised Qwen2 model with a real BPE tokenizer, built in seconds.

Fast tests exercise the real loading, prompting and decoding code on it; its output is
nonsense but deterministic, which is all that equality tests need.  The tokenizer is
trained on this repository's own Python sources and knows Qwen's FIM tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|file_sep|>"]
_SOURCES = Path(__file__).resolve().parents[1] / "lsp_server"


def build_tiny_model(target: Path, seed: int = 0) -> Path:
    """Write a tokenizer + safetensors model folder to ``target`` and return it."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    texts = [path.read_text() for path in sorted(_SOURCES.rglob("*.py"))]
    tokenizer.train_from_iterator(texts, trainer)
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
        tie_word_embeddings=False,
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
