"""Multi-head attention for self- and cross-attention, with MHA, GQA and MQA.

Each query token builds a weighted average of value vectors; the weights are the
softmax of its scaled dot products with the keys:
``Attention(Q, K, V) = softmax(Q Kᵀ / √d_h) V``. Several heads do this in parallel on
``d_h``-wide slices, so that each can look for something different.

``n_kv_heads`` picks how many key/value heads serve the ``n_heads`` query heads:
all of them (multi-head attention, MHA), a divisor (grouped-query attention, GQA), or a
single one (multi-query attention, MQA). Fewer key/value heads shrink the KV cache and
speed up decoding, for a small loss in quality.

This module projects hidden states into heads and back; the attention arithmetic on
the heads is :func:`~encoder_transformer.scaled_dot_product.attend`
(:meth:`MultiHeadAttention.forward_with_weights` also returns the attention weights).

Shapes: ``b`` batch, ``s_q`` query length, ``s_kv`` key length, ``d`` d_model,
``h`` query heads, ``h_kv`` key/value heads, ``d_h`` head_dim.
Masks are bool and **True where a token is real / may be attended to**.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from encoder_transformer.dropout import Dropout
from encoder_transformer.positional import RotaryEmbedding
from encoder_transformer.scaled_dot_product import (
    attend,
    attend_with_weights,
    merge_heads,
)


class AttentionCache(Protocol):
    """What attention needs from a key/value cache (``decoder_transformer.kv_cache``).

    ``length`` is the number of positions stored so far. ``update`` appends new keys
    and values ``(b, h_kv, s_new, d_h)`` and returns all of them
    ``(b, h_kv, length, d_h)``; ``read`` returns what is stored without appending.
    """

    @property
    def length(self) -> int: ...

    def update(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]: ...

    def read(self) -> tuple[Tensor, Tensor]: ...


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``n_heads`` query and ``n_kv_heads`` KV heads.

    One module serves both uses: self-attention (queries, keys and values from the
    same sequence) and cross-attention (queries from the decoder, keys and values from
    the encoder's output).

    Args:
        d_model: Width of the input and output hidden states.
        n_heads: Number of query heads ``h``.
        n_kv_heads: Number of key/value heads ``h_kv`` (divides ``h``).
        dropout: Dropout after the output projection.
        attention_dropout: Dropout on the attention weights (training only).
        bias: Whether the projections have biases.
        rotary: Rotary embedding applied to queries and keys, or None.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        bias: bool = True,
        rotary: RotaryEmbedding | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(
                f"d_model={d_model}, n_heads={n_heads}, n_kv_heads={n_kv_heads}: "
                "d_model must divide by n_heads and n_heads by n_kv_heads"
            )
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = d_model // n_heads
        self.attention_dropout = attention_dropout
        self.rotary = rotary
        self.query = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.key = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.value = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.output = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)
        self.dropout = Dropout(dropout)

    def split_heads(self, states: Tensor, n_heads: int) -> Tensor:
        """``(b, s, n_heads·d_h)`` → ``(b, n_heads, s, d_h)``."""
        batch, length, _ = states.shape
        return states.view(batch, length, n_heads, self.head_dim).transpose(1, 2)

    def project_key_values(self, states: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of ``(b, s_kv, d)`` states, each ``(b, h_kv, s_kv, d_h)``."""
        keys = self.split_heads(self.key(states), self.n_kv_heads)
        values = self.split_heads(self.value(states), self.n_kv_heads)
        return keys, values

    def project_self_attention(self, states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention's projections of ``(b, s, d)`` states.

        Returns:
            Queries ``(b, h, s, d_h)``, keys and values ``(b, h_kv, s, d_h)``.
        """
        queries = self.split_heads(self.query(states), self.n_heads)
        return queries, *self.project_key_values(states)

    def forward(
        self,
        query_states: Tensor,
        key_value_states: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: AttentionCache | None = None,
    ) -> Tensor:
        """Attends from ``query_states`` to ``key_value_states`` (itself if None).

        Args:
            query_states: ``(b, s_q, d)``.
            key_value_states: ``(b, s_kv, d)`` for cross-attention; None for
                self-attention.
            key_padding_mask: ``(b, s_kv_total)`` bool, True for real keys, covering
                every key attended to (cached ones included); None if all are real.
            is_causal: Query ``i`` sees only keys at or before its position.
            cache: Self-attention: the new keys/values are appended and attention
                runs over all of them; queries start at position ``cache.length``.
                Cross-attention: keys/values of ``key_value_states`` are projected
                once, stored, and read back on later calls.

        Returns:
            ``(b, s_q, d)``.
        """
        queries, keys, values = self.project(query_states, key_value_states, cache)
        attended = attend(
            queries,
            keys,
            values,
            key_padding_mask,
            is_causal,
            dropout=self.attention_dropout if self.training else 0.0,
        )
        return self.dropout(self.output(merge_heads(attended)))

    def forward_with_weights(
        self,
        query_states: Tensor,
        key_value_states: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` without a cache, also returning the attention weights.

        The softmax is written out (:func:`attend_with_weights`) instead of SDPA's
        fused kernel, so it is slower: for showing what the model attends to (a
        cross-attention alignment), not for decoding. No attention dropout.

        Args:
            query_states, key_value_states, key_padding_mask, is_causal: As in
                :meth:`forward`.

        Returns:
            ``(output, weights)``: ``(b, s_q, d)`` as :meth:`forward` gives, and the
            weights per query head ``(b, h, s_q, s_kv)``, rows summing to 1.
        """
        queries, keys, values = self.project(query_states, key_value_states)
        attended, weights = attend_with_weights(
            queries, keys, values, key_padding_mask, is_causal
        )
        return self.dropout(self.output(merge_heads(attended))), weights

    def project(
        self,
        query_states: Tensor,
        key_value_states: Tensor | None = None,
        cache: AttentionCache | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values for attention (arguments as in :meth:`forward`).

        Returns:
            Queries ``(b, h, s_q, d_h)`` (rotated, with rotary positions); keys and
            values ``(b, h_kv, s_kv, d_h)``, the cached ones included.
        """
        if key_value_states is None:
            offset = 0 if cache is None else cache.length
            queries, keys, values = self.project_self_attention(query_states)
            if self.rotary is not None:
                queries = self.rotary(queries, offset)
                keys = self.rotary(keys, offset)
            if cache is not None:
                keys, values = cache.update(keys, values)
            return queries, keys, values
        # (b, s_q, d) -> (b, h, s_q, d_h)
        queries = self.split_heads(self.query(query_states), self.n_heads)
        if cache is not None and cache.length > 0:
            # The source does not change while decoding: reuse its keys/values.
            keys, values = cache.read()
        else:
            keys, values = self.project_key_values(key_value_states)
            if cache is not None:
                keys, values = cache.update(keys, values)
        return queries, keys, values
