"""The cache of one multi-head latent attention (MLA) layer: a latent per token.

MLA (``encoder_transformer.latent_attention``) caches less than keys and values: per
token one latent vector and one small rotary key, from which every head's keys and
values follow.

Shapes: ``b`` batch, ``s`` positions, ``d_c`` kv_latent_dim, ``d_r`` rope_head_dim.
"""

from __future__ import annotations

from torch import Tensor

from decoder_transformer.compaction import Compaction


class LatentCache:
    """MLA's cache of one layer: each token's latent and rotary key, ``(b, s, ·)``.

    One entry per token is the ``d_c``-wide key/value latent followed by the
    ``d_r``-wide rotary key shared by all heads (``d_r = 0`` without RoPE), as
    ``MultiHeadLatentAttention.compress`` lays it out. Keeping both in one buffer lets
    decoding attend over the buffer as it is. Storage is preallocated for
    ``capacity`` positions (or 16) and grows by doubling, like
    :class:`~decoder_transformer.kv_cache.KeyValueCache`.

    Args:
        capacity: Positions to preallocate, or None to start small and grow.

    >>> import torch
    >>> cache = LatentCache()
    >>> entries = cache.update(torch.ones(2, 3, 10))
    >>> entries = cache.update(torch.zeros(2, 1, 10))
    >>> cache.length, tuple(entries.shape)
    (4, (2, 4, 10))
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._entries: Tensor | None = None
        self._length = 0

    @property
    def length(self) -> int:
        """Positions stored so far."""
        return self._length

    def update(self, entries: Tensor) -> Tensor:
        """Appends ``(b, s_new, d_c + d_r)`` entries; returns all stored (a view)."""
        end = self._length + entries.size(1)
        if self._entries is None or end > self._entries.size(1):
            batch, _, width = entries.shape
            size = max(end, self.capacity or 16) if self._entries is None else 2 * end
            grown = entries.new_empty(batch, size, width)
            if self._entries is not None:
                grown[:, : self._length] = self._entries[:, : self._length]
            self._entries = grown
        self._entries[:, self._length : end] = entries
        self._length = end
        return self.read()

    def read(self) -> Tensor:
        """The stored entries, ``(b, length, d_c + d_r)`` (a view)."""
        if self._entries is None:
            raise RuntimeError("the cache is empty: call update() first")
        return self._entries[:, : self._length]

    def reorder(self, indices: Tensor) -> None:
        """Keeps batch rows ``indices`` (a ``(b_new,)`` long tensor), in that order."""
        if self._entries is not None:
            self._entries = self._entries.index_select(0, indices)

    def compact(self, compaction: Compaction) -> None:
        """Keeps rows ``compaction.order``, like ``reorder``, moving only the few."""
        if self._entries is not None:
            self._entries = compaction.apply_(self._entries)
