"""A KV cache that appends into spare capacity instead of copying itself every pass.

transformers' ``DynamicLayer`` concatenates the new keys and values onto the old ones,
so every decoding pass copies the whole cache: at a 2,000-token context of the default
model that is 48 copies of 512 KB, about 3 ms of a 35 ms one-token pass on this CPU
(profiled: ``aten::cat`` was 10% of the pass).  Here each layer keeps a buffer with room
to grow; a pass writes only its own positions, and ``keys``/``values`` are views of the
buffer's filled part, so cropping, and the in-place moves that keep a verified tree
path, work on them unchanged.  The values seen by attention are the same, position for
position, so results do not change by a bit.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

GROW = 512
"""Spare positions added when a buffer is full (or half the length, if more)."""


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are views of larger buffers."""

    _key_buffer: torch.Tensor | None = None
    _value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.keys.shape[-2] if self.keys.numel() else 0
        end = length + key_states.shape[-2]
        if not self._holds(key_states, end):
            self._grow(key_states, value_states, length, end)
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[..., length:end, :] = key_states
        self._value_buffer[..., length:end, :] = value_states
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        return self.keys, self.values

    def _holds(self, key_states: torch.Tensor, end: int) -> bool:
        """Whether the buffers have room for ``end`` positions and ``keys`` still lives in them
        (anyone may have assigned other tensors to ``keys``/``values``)."""
        buffer = self._key_buffer
        if buffer is None or buffer.shape[-2] < end or buffer.shape[:2] != key_states.shape[:2]:
            return False
        return self.keys.numel() == 0 or (self.keys.data_ptr() == buffer.data_ptr()
                                          and self.values.data_ptr() == self._value_buffer.data_ptr())

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int, end: int) -> None:
        capacity = end + max(GROW, end // 2)
        keys = key_states.new_empty(*key_states.shape[:2], capacity, key_states.shape[-1])
        values = value_states.new_empty(*value_states.shape[:2], capacity, value_states.shape[-1])
        if length:
            keys[..., :length, :] = self.keys
            values[..., :length, :] = self.values
        self._key_buffer, self._value_buffer = keys, values

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()


def new_cache() -> DynamicCache:
    """An empty cache for one sequence whose layers grow in place."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer  # layers are made on first use, none exist yet
    return cache


def forward_with_cache(body: torch.nn.Module, cache: DynamicCache, **inputs: Any) -> Any:
    """Run a transformers decoder ``body`` on ``inputs``, appending to ``cache``.

    transformers 5.24 renamed the forward's ``past_key_values`` to ``cache`` (the old name
    still works but warns, and goes in 5.40); earlier 5.x releases know only the old name,
    and ``pyproject.toml`` admits both."""
    return body(**{_cache_keyword(type(body)): cache}, use_cache=True, **inputs)


@functools.cache
def _cache_keyword(body_type: type) -> str:
    return "cache" if "cache" in inspect.signature(body_type.forward).parameters else "past_key_values"
