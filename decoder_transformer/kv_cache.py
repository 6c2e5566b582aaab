"""The key/value cache of one attention layer, in preallocated buffers.

A decoder generates one token at a time. Without a cache, step t recomputes the keys
and values of all t earlier tokens in every layer, although they never change (causal
attention: a token never sees later ones). :class:`KeyValueCache` keeps them: each
step projects only the newest token and appends its key and value. Cross-attention
keys and values come from the encoder output, which is fixed for a source sentence:
they are projected at the first step and read back afterwards.

Beam search continues each surviving hypothesis from its parent beam; ``reorder``
gathers the cache along the batch by those parent indices, so each row again holds
the history of the hypothesis it continues. ``compact`` drops rows by moving only a
few (``compaction.Compaction``).

The cache is for inference (``torch.no_grad``): it writes into preallocated buffers.

Shapes: ``b`` batch, ``h_kv`` key/value heads, ``s`` positions, ``d_h`` head_dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from decoder_transformer.compaction import Compaction


def storage_dtype(keys: Tensor) -> torch.dtype:
    """The type a KV cache stores ``keys`` in: fp32 for bf16/fp16 on a CPU.

    >>> storage_dtype(torch.zeros(1, dtype=torch.bfloat16))
    torch.float32
    """
    low_precision = keys.dtype in (torch.bfloat16, torch.float16)
    return torch.float32 if keys.device.type == "cpu" and low_precision else keys.dtype


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
        keys, values = self._keys, self._values
        if self._batch < keys.size(0):  # (slicing costs two operations a call)
            keys, values = keys[: self._batch], values[: self._batch]
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
