"""Build the model prompt: fill-in-the-middle when the model knows how, within a token budget.

Far-away text goes first: the prefix is cut at a line start far from the cursor, the
suffix at a line end.  The prefix window's start is *sticky*: it stays put while the user
types (cut with some slack), because moving it would change the first tokens of the
prompt and throw away the whole reusable KV cache on every keystroke.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

# (prefix, suffix, middle) sentinel tokens of the FIM dialects we know.
_FIM_DIALECTS = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, CodeGemma-like
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder family
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
)
# Tokens after which a FIM model has finished the middle part, where the tokenizer does
# not mark them special.
_END_OF_MIDDLE = ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<file_sep>", "<｜end▁of▁sentence｜>")
_CHARS_PER_TOKEN_MAX = 8  # generous upper bound, used to avoid tokenizing whole huge files
SUFFIX_SHARE = 0.25
"""Part of the budget a FIM prompt gives the text after the cursor."""


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    prefix_chars: int
    """How many characters of the prefix (counted back from the cursor) are in the prompt."""
    suffix_chars: int


def newline_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Tokens that contain a line break (byte-level BPE spells it "Ċ")."""
    return frozenset(i for token, i in tokenizer.get_vocab().items() if "Ċ" in token or "\n" in token)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, offsets: bool = False) -> dict:
    # split_special_tokens: a literal "<|fim_prefix|>" typed in a file is text, not a control token.
    return tokenizer(
        text,
        add_special_tokens=False,
        split_special_tokens=True,
        return_offsets_mapping=offsets,
    )


class PromptBuilder:
    """Turns (prefix, suffix) into prompt token ids for one tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, suffix_share: float = SUFFIX_SHARE) -> None:
        self.tokenizer = tokenizer
        self.suffix_share = suffix_share
        self.fim_ids = self._find_fim(tokenizer)
        self.stop_ids = self._find_stop_ids(tokenizer)
        self._anchor: tuple[int, str] | None = None  # (window start, text there) of the last prompt

    @staticmethod
    def _find_fim(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int, int] | None:
        vocab = tokenizer.get_vocab()
        for dialect in _FIM_DIALECTS:
            if all(token in vocab for token in dialect):
                prefix, suffix, middle = (vocab[token] for token in dialect)
                return prefix, suffix, middle
        return None

    @staticmethod
    def _find_stop_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
        vocab = tokenizer.get_vocab()
        ids = {vocab[token] for token in _END_OF_MIDDLE if token in vocab}
        # Any control token (a new FIM sentinel, a chat turn marker) ends plain code.
        ids.update(tokenizer.all_special_ids)
        ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
        return frozenset(ids)

    @property
    def uses_fim(self) -> bool:
        return self.fim_ids is not None

    def build(self, prefix: str, suffix: str, context_tokens: int, fresh: bool = False) -> Prompt:
        """The prompt for a cursor; ``fresh`` when it is another document's (or a new task's):
        then the window does not stick to where the last prompt's started."""
        if fresh:
            self._anchor = None
        budget = context_tokens - 4
        suffix_budget = int(budget * self.suffix_share) if self.uses_fim else 0
        suffix_ids, suffix_chars = self._head(suffix, suffix_budget)
        prefix_ids, prefix_chars = self._tail(prefix, budget - len(suffix_ids))
        if self.fim_ids is None:
            bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
            return Prompt(bos + prefix_ids, prefix_chars, 0)
        pre, suf, mid = self.fim_ids
        return Prompt([pre, *prefix_ids, suf, *suffix_ids, mid], prefix_chars, suffix_chars)

    def split(self, ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """A prompt's tokens of the text before and after the cursor, without sentinels."""
        if self.fim_ids is None:
            bos = self.tokenizer.bos_token_id
            return [t for t in ids[:1] if t != bos] + list(ids[1:]), []
        pre, suf, mid = self.fim_ids
        if len(ids) < 3 or ids[0] != pre or ids[-1] != mid or suf not in ids:
            return list(ids), []
        cut = list(ids).index(suf)
        return list(ids[1:cut]), list(ids[cut + 1 : -1])

    def _head(self, text: str, budget: int) -> tuple[list[int], int]:
        """Tokens of the start of ``text`` within ``budget``, cut after a whole line."""
        if budget <= 0 or not text:
            return [], 0
        window = text[: budget * _CHARS_PER_TOKEN_MAX]
        encoded = _encode(self.tokenizer, window, offsets=True)
        ids = encoded["input_ids"]
        if len(ids) <= budget and len(window) == len(text):
            return ids, len(window)
        cut = encoded["offset_mapping"][min(budget, len(ids)) - 1][1]
        line_cut = window.rfind("\n", 0, cut)
        window = window[: line_cut + 1] if line_cut > 0 else window[:cut]
        return _encode(self.tokenizer, window)["input_ids"][:budget], len(window)

    def _tail(self, text: str, budget: int) -> tuple[list[int], int]:
        """Tokens of the end of ``text`` within ``budget``, starting at a line start."""
        start = self._sticky_start(text, budget)
        if start is None:
            start = self._fresh_start(text, budget - budget // 8)
        self._anchor = (start, text[start : start + 64])
        ids = _encode(self.tokenizer, text[start:])["input_ids"]
        if len(ids) > budget:  # a single line longer than the budget: hard cut
            ids = ids[-budget:]
        return ids, len(text) - start

    def _sticky_start(self, text: str, budget: int) -> int | None:
        if self._anchor is None:
            return None
        start, head = self._anchor
        if text[start : start + 64] != head:
            return None
        # Cheap bound first: the window cannot overflow if it is short in characters.
        if len(text) - start > budget and len(_encode(self.tokenizer, text[start:])["input_ids"]) > budget:
            return None
        return start

    def _fresh_start(self, text: str, budget: int) -> int:
        """A line start such that the rest of ``text`` fits in ``budget`` tokens."""
        window_start = max(0, len(text) - budget * _CHARS_PER_TOKEN_MAX)
        if window_start > 0:
            window_start = text.find("\n", window_start) + 1 or window_start
        window = text[window_start:]
        encoded = _encode(self.tokenizer, window, offsets=True)
        ids = encoded["input_ids"]
        if len(ids) <= budget:
            return window_start
        first_kept = encoded["offset_mapping"][len(ids) - budget][0]
        line = window.find("\n", first_kept)
        # No line break left before the cursor: the last line alone is too long, cut mid-line.
        cut = line + 1 if 0 <= line < len(window) - 1 else first_kept
        return window_start + cut
