"""The key/value cache that makes step-by-step decoding cost O(s) per token, not O(s²).

A decoder generates one token at a time. Without a cache, step t recomputes the keys
and values of all t earlier tokens in every layer, although they never change (causal
attention: a token never sees later ones). The cache keeps them: each step projects
only the newest token and appends its key and value.

Cross-attention keys and values come from the encoder output, which is fixed for a
source sentence: they are projected at the first step and read back afterwards.

Multi-head latent attention (MLA, ``encoder_transformer.latent_attention``) caches less:
per token one latent vector and one small rotary key (``LatentCache``), from which
every head's keys and values follow.

Beam search keeps several hypotheses per sentence and, after each step, continues each
surviving one from its parent beam; ``reorder`` gathers every cache along the batch by
those parent indices, so each row again holds the history of the hypothesis it
continues (and drops sentences that have finished). When only a few rows leave and
the others keep their histories (greedy search, or the source rows of beam search),
``compact`` moves the last kept rows into the places of the leaving ones instead
(:class:`Compaction`), copying as many rows as left rather than all of them.

The cache is for inference (``torch.no_grad``): it writes into preallocated buffers.

Shapes: ``b`` batch, ``h_kv`` key/value heads, ``s`` positions, ``d_h`` head_dim,
``d_c`` kv_latent_dim, ``d_r`` rope_head_dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def storage_dtype(keys: Tensor) -> torch.dtype:
    """The type a KV cache stores ``keys`` in: fp32 for bf16/fp16 on a CPU.

    >>> storage_dtype(torch.zeros(1, dtype=torch.bfloat16))
    torch.float32
    """
    low_precision = keys.dtype in (torch.bfloat16, torch.float16)
    return torch.float32 if keys.device.type == "cpu" and low_precision else keys.dtype


@dataclass(frozen=True)
class Compaction:
    """Rows leaving a batch, by moving the last kept rows into the leaving rows' places.

    Gathering the kept rows (``reorder``) copies every one of them; when a few rows
    of many leave (sentences that finished), moving just the last kept rows into the
    places of the leaving ones copies as many rows as left. The kept rows change
    order, which ``order`` records: compacting a tensor gives what
    ``tensor.index_select(0, order)`` would.

    Attributes:
        order: ``(b_new,)`` the old row of each new row.
        sources: ``(m,)`` kept rows at ``b_new`` or beyond, which move ...
        destinations: ``(m,)`` ... into these places of leaving rows below ``b_new``.

    >>> moves = Compaction.keeping(torch.tensor([True, False, True, True, False, True]))
    >>> moves.order.tolist(), moves.sources.tolist(), moves.destinations.tolist()
    ([0, 5, 2, 3], [5], [1])
    """

    order: Tensor
    sources: Tensor
    destinations: Tensor

    @classmethod
    def keeping(cls, keep: Tensor) -> Compaction:
        """The compaction that keeps the rows where ``keep`` (``(b,)`` bool) is True."""
        rows = int(keep.sum())
        destinations = (~keep[:rows]).nonzero().squeeze(1)
        sources = keep[rows:].nonzero().squeeze(1) + rows
        order = torch.arange(rows, device=keep.device)
        order[destinations] = sources
        return cls(order, sources, destinations)

    @property
    def rows(self) -> int:
        """Rows kept, ``b_new``."""
        return self.order.size(0)

    def apply_(self, tensor: Tensor) -> Tensor:
        """Moves the rows of ``tensor`` in place; returns its first ``b_new`` (a view).

        Only for tensors the caller owns: the leaving rows are overwritten.
        """
        tensor.index_copy_(0, self.destinations, tensor.index_select(0, self.sources))
        return tensor[: self.rows]


class KeyValueCache:
    """Keys and values of one attention layer, ``(b, h_kv, length, d_h)`` each.

    Storage is preallocated: for ``capacity`` positions when the caller knows how
    many it will need (search knows its longest output), else 16, and it grows by
    doubling when full, so appending one step is amortized O(1) copies rather than
    the O(length) of ``torch.cat`` at every step. Reordering gathers only the stored
    positions, into a second buffer of the same size that is kept for the next
    reorder, so beam search (which reorders at every step) allocates no memory per
    step either.

    On a CPU, bf16 or fp16 keys and values are stored in fp32 (:func:`storage_dtype`),
    and attention over them runs in fp32: a CPU multiplies the small matrices of a
    decoding step much faster in fp32 than in bf16 (``bench/README.md``).

    Args:
        capacity: Positions to preallocate, or None to start small and grow.

    >>> import torch
    >>> cache = KeyValueCache()
    >>> keys, values = cache.update(torch.ones(2, 1, 3, 4), torch.ones(2, 1, 3, 4))
    >>> keys, values = cache.update(torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, 1, 4))
    >>> cache.length, tuple(keys.shape)
    (4, (2, 1, 4, 4))
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        # Storage (b_max, h_kv, capacity, d_h); rows [:batch], positions [:length].
        self._keys: Tensor | None = None
        self._values: Tensor | None = None
        self._spare: tuple[Tensor, Tensor] | None = None  # where reorder gathers to
        self._batch = 0
        self._length = 0

    @property
    def length(self) -> int:
        """Positions stored so far."""
        return self._length

    @property
    def batch(self) -> int:
        """Rows stored (0 while empty)."""
        return self._batch

    def update(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Appends ``(b, h_kv, s_new, d_h)`` keys and values; returns all stored."""
        end = self._length + keys.size(2)
        if self._keys is None:
            self._batch = keys.size(0)
            self._allocate(keys, values, max(end, self.capacity or 16))
        elif keys.size(0) != self._batch:
            raise ValueError(
                f"the cache holds {self._batch} rows but {keys.size(0)} were given: "
                "reorder() it when rows leave or are repeated"
            )
        elif end > self._keys.size(2):
            self._allocate(keys, values, 2 * end)
        self._keys[: self._batch, :, self._length : end] = keys
        self._values[: self._batch, :, self._length : end] = values
        self._length = end
        return self.read()

    def read(self) -> tuple[Tensor, Tensor]:
        """The stored keys and values, ``(b, h_kv, length, d_h)`` each (views)."""
        if self._keys is None:
            raise RuntimeError("the cache is empty: call update() first")
        return (
            self._keys[: self._batch, :, : self._length],
            self._values[: self._batch, :, : self._length],
        )

    def storage(self, room: int = 0) -> tuple[Tensor, Tensor]:
        """The stored rows' whole buffers, ``(b, h_kv, capacity, d_h)`` each (views).

        Positions ``[:length]`` hold what is stored, and at least ``room`` more
        follow (the buffers grow if needed): for code that writes the next positions
        into the buffers itself, as a compiled decoding step does, and then counts
        them with :meth:`advance`.
        """
        if self._keys is None:
            raise RuntimeError("the cache is empty: call update() first")
        keys, values = self._keys[: self._batch], self._values[: self._batch]
        if self._length + room > keys.size(2):
            self._allocate(keys, values, 2 * (self._length + room))
            keys, values = self._keys, self._values
        return keys, values

    def advance(self, positions: int) -> None:
        """Counts ``positions`` written into :meth:`storage` after the stored ones."""
        if self._keys is None or self._length + positions > self._keys.size(2):
            raise ValueError(f"no room for {positions} more positions in the cache")
        self._length += positions

    def reorder(self, indices: Tensor) -> None:
        """Keeps batch rows ``indices`` (a ``(b_new,)`` long tensor), in that order."""
        if self._keys is None:
            return
        keys, values = self.read()
        rows = indices.size(0)
        if self._spare is None or rows > self._spare[0].size(0):
            size = max(rows, self._keys.size(0))
            self._spare = (
                self._keys.new_empty(size, *self._keys.shape[1:]),
                self._values.new_empty(size, *self._values.shape[1:]),
            )
        spare_keys, spare_values = self._spare
        # Gather straight into the spare buffer's first rows and positions.
        torch.index_select(keys, 0, indices, out=spare_keys[:rows, :, : self._length])
        torch.index_select(
            values, 0, indices, out=spare_values[:rows, :, : self._length]
        )
        self._spare = (self._keys, self._values)
        self._keys, self._values = spare_keys, spare_values
        self._batch = rows

    def compact(self, compaction: Compaction) -> None:
        """Keeps rows ``compaction.order``, like ``reorder``, moving only the few."""
        if self._keys is None:
            return
        keys, values = self.read()
        compaction.apply_(keys)
        compaction.apply_(values)
        self._batch = compaction.rows

    def _allocate(self, keys: Tensor, values: Tensor, capacity: int) -> None:
        """New storage for ``capacity`` positions, keeping what is stored.

        ``keys`` and ``values`` give the rows, heads, widths and type.
        """
        rows, heads, _, head_dim = keys.shape
        dtype = storage_dtype(keys)
        new_keys = keys.new_empty(rows, heads, capacity, head_dim, dtype=dtype)
        new_values = values.new_empty(
            rows, heads, capacity, values.size(-1), dtype=dtype
        )
        if self._keys is not None:
            stored_keys, stored_values = self.read()
            new_keys[:, :, : self._length] = stored_keys
            new_values[:, :, : self._length] = stored_values
        self._keys, self._values, self._spare = new_keys, new_values, None


class LatentCache:
    """MLA's cache of one layer: each token's latent and rotary key, ``(b, s, ·)``.

    One entry per token is the ``d_c``-wide key/value latent followed by the
    ``d_r``-wide rotary key shared by all heads (``d_r = 0`` without RoPE), as
    ``MultiHeadLatentAttention.compress`` lays it out. Keeping both in one buffer lets
    decoding attend over the buffer as it is. Storage is preallocated for
    ``capacity`` positions (or 16) and grows by doubling, like :class:`KeyValueCache`.

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


class DecoderCache:
    """The caches of a decoder stack: self- and cross-attention, one per layer.

    Args:
        n_layers: Decoder blocks.
        cross_attention: Whether the blocks attend to an encoder (False for a GPT).
        capacity: Target positions to preallocate in the self-attention caches
            (e.g. the longest output a search allows), or None to grow as needed.
        latent: Whether self-attention is latent attention (MLA), which caches
            latents (:class:`LatentCache`) instead of keys and values.
    """

    def __init__(
        self,
        n_layers: int,
        cross_attention: bool = True,
        capacity: int | None = None,
        latent: bool = False,
    ) -> None:
        self_attention_cache = LatentCache if latent else KeyValueCache
        self.self_attention: list[KeyValueCache] | list[LatentCache] = [
            self_attention_cache(capacity) for _ in range(n_layers)
        ]
        self.cross_attention = (
            [KeyValueCache() for _ in range(n_layers)] if cross_attention else None
        )

    @property
    def length(self) -> int:
        """Target positions decoded so far (the position of the next token)."""
        return self.self_attention[0].length

    def reorder(self, indices: Tensor) -> None:
        """Gathers every layer's cache along the batch: row i becomes row indices[i].

        Args:
            indices: ``(b_new,)`` long tensor of rows to keep, e.g. the sentences
                still decoding; ``b_new`` may be smaller than ``b``.
        """
        self.reorder_self_attention(indices)
        self.reorder_cross_attention(indices)

    def compact(self, compaction: Compaction) -> None:
        """Keeps rows ``compaction.order`` of every cache, moving only the few.

        The same result as ``reorder(compaction.order)``, for rows that leave
        (e.g. finished sentences) while the others keep their histories.
        """
        for cache in self.self_attention:
            cache.compact(compaction)
        self.compact_cross_attention(compaction)

    def reorder_self_attention(self, indices: Tensor) -> None:
        """Gathers the self-attention caches only (the target histories).

        Beam search does this at every step, with the parent beam of each new
        hypothesis, while the cross-attention caches keep one row per source.
        """
        for cache in self.self_attention:
            cache.reorder(indices)

    def reorder_cross_attention(self, indices: Tensor) -> None:
        """Gathers the cross-attention caches only (the source keys and values)."""
        for cache in self.cross_attention or []:
            cache.reorder(indices)

    def compact_cross_attention(self, compaction: Compaction) -> None:
        """Compacts the cross-attention caches only (sentences leaving beam search)."""
        for cache in self.cross_attention or []:
            cache.compact(compaction)
