"""GrowingCache: a KV cache in preallocated buffers, so decoding does not copy the whole cache every token.

transformers' ``DynamicCache`` appends with ``torch.cat``: each decoded token copies every layer's keys
and values into a new tensor, O(T) per token and O(T^2) over a generation. ``GrowingCache`` keeps one
buffer per layer with spare room at the end (capacity doubles when it runs out, so appends are amortised
O(1)) and hands the model views of the filled part. Cropping, which FlashBack does at every retrieval
point, only moves the fill mark: the bytes past it are overwritten by the next write.

The values the model reads are exactly those DynamicCache would hold (same tensors, written in place
instead of concatenated), so logits match bit for bit; tests/unit/test_growing_cache.py checks that.

    >>> import torch
    >>> from flashback_rag.growing_cache import GrowingCache
    >>> cache = GrowingCache(capacity=4)
    >>> k = torch.randn(1, 2, 3, 8)                    # (batch, kv heads, new tokens, head dim)
    >>> keys, values = cache.update(k, k.clone(), layer_idx=0)
    >>> keys.shape, cache.get_seq_length()
    (torch.Size([1, 2, 3, 8]), 3)
    >>> cache.crop(-1)                                  # drop the last position (transformers 5 style)
    >>> cache.get_seq_length(), cache.layers[0].capacity
    (2, 4)
    >>> keys, _ = cache.update(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), layer_idx=0)
    >>> cache.get_seq_length(), cache.layers[0].capacity   # 7 > 4: the buffer doubled
    (7, 8)
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

DEFAULT_CAPACITY = 256


class GrowingLayer(DynamicLayer):
    """One layer's keys and values in buffers of shape (batch, kv heads, capacity, head dim).

    ``self.keys`` / ``self.values`` are always views of the filled part ``[..., :length, :]``, so code
    that reads them the DynamicLayer way keeps working.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, **kwargs) -> None:
        super().__init__(**kwargs)
        self.capacity = max(1, int(capacity))
        self.length = 0
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._kbuf = self._vbuf = None
        self.length = 0
        self.is_initialized = True

    def _reserve(self, needed: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Make the buffers hold at least ``needed`` positions, keeping the filled part."""
        if self._kbuf is not None and needed <= self._kbuf.shape[-2]:
            return
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        kshape = (*key_states.shape[:-2], capacity, key_states.shape[-1])
        vshape = (*value_states.shape[:-2], capacity, value_states.shape[-1])
        kbuf = key_states.new_empty(kshape)
        vbuf = value_states.new_empty(vshape)
        if self._kbuf is not None and self.length:
            kbuf[..., :self.length, :] = self._kbuf[..., :self.length, :]
            vbuf[..., :self.length, :] = self._vbuf[..., :self.length, :]
        self._kbuf, self._vbuf, self.capacity = kbuf, vbuf, capacity

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions after the filled part; return views of everything filled."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        end = self.length + new
        self._reserve(end, key_states, value_states)
        self._kbuf[..., self.length:end, :] = key_states
        self._vbuf[..., self.length:end, :] = value_states
        self.length = end
        self.keys = self._kbuf[..., :end, :]
        self.values = self._vbuf[..., :end, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` positions (transformers 5: a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of positions to remove")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self.length = max(0, self.length + tokens_to_remove)
        if self._kbuf is not None:
            self.keys = self._kbuf[..., :self.length, :]
            self.values = self._vbuf[..., :self.length, :]

    def reset(self) -> None:
        """Forget the contents but keep the buffers for reuse."""
        self.length = 0
        if self._kbuf is not None:
            self.keys = self._kbuf[..., :0, :]
            self.values = self._vbuf[..., :0, :]

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("GrowingCache holds a single sequence; beam search is not supported")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("GrowingCache holds a single sequence; beam search is not supported")


class GrowingCache(DynamicCache):
    """A DynamicCache whose layers are :class:`GrowingLayer` s (preallocated, amortised appends).

    ``capacity`` is the number of positions each layer's buffer starts with: give the longest context
    you expect and no buffer ever grows.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        # Skip DynamicCache.__init__ (it would build plain DynamicLayers); build lazily, one per layer.
        Cache.__init__(self, layer_class_to_replicate=lambda: GrowingLayer(capacity))
        self.capacity = capacity
