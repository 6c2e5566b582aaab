"""Stand-in caches over explicit tensors, for exporting the decoding steps.

An exported program is a function of tensors: it cannot hold the eager
:class:`~decoder_transformer.cache.DecoderCache`. Inside the programs the decoder's
own modules run on these stand-ins instead, which read given buffers and write the
new keys and values into them in place, as the eager cache would append them.

Shapes: ``b`` rows, ``h`` heads, ``s_new`` new positions, ``d_h`` head width.
"""

from __future__ import annotations

from torch import Tensor

from decoder_transformer.kv_cache import storage_dtype


class GivenKeyValues:
    """A stand-in layer cache over given buffers, written in place.

    ``keys`` and ``values`` are ``(b, h, capacity, d_h)`` buffers whose first
    ``length`` positions are stored; ``update`` writes the next positions into them.
    """

    def __init__(self, keys: Tensor, values: Tensor, length: int) -> None:
        self.keys, self.values, self.length = keys, values, length

    @property
    def batch(self) -> int:
        return self.keys.size(0)

    def update(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Writes ``(b, h, s_new, d_h)`` after the stored positions; returns all."""
        end = self.length + keys.size(2)
        self.keys[:, :, self.length : end].copy_(keys)
        self.values[:, :, self.length : end].copy_(values)
        self.length = end
        return self.read()

    def read(self) -> tuple[Tensor, Tensor]:
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]


class NewKeyValues:
    """A stand-in for an empty layer cache: keeps what the first step appends."""

    length = 0
    batch = 0

    def __init__(self) -> None:
        self.appended: tuple[Tensor, Tensor] | None = None

    def update(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Keeps ``(b, h, s_new, d_h)`` keys and values; returns them as a cache
        would store them (fp32 on a CPU, :func:`storage_dtype`)."""
        self.appended = (keys, values)
        dtype = storage_dtype(keys)
        return keys.to(dtype), values.to(dtype)


class GivenCache:
    """What the decoder reads of a :class:`DecoderCache`, over given stand-ins."""

    def __init__(
        self,
        self_attention: list[GivenKeyValues] | list[NewKeyValues],
        cross_attention: list[GivenKeyValues] | list[NewKeyValues],
    ) -> None:
        self.self_attention, self.cross_attention = self_attention, cross_attention

    @property
    def length(self) -> int:
        return self.self_attention[0].length
