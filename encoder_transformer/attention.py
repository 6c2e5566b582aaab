"""Multi-head attention for self- and cross-attention, with MHA, GQA and MQA.

Each query token builds a weighted average of value vectors; the weights are the
softmax of its scaled dot products with the keys:
``Attention(Q, K, V) = softmax(Q Kᵀ / √d_h) V``. Several heads do this in parallel on
``d_h``-wide slices, so that each can look for something different.

``n_kv_heads`` picks how many key/value heads serve the ``n_heads`` query heads:
all of them (multi-head attention, MHA), a divisor (grouped-query attention, GQA), or a
single one (multi-query attention, MQA). Fewer key/value heads shrink the KV cache and
speed up decoding, for a small loss in quality.

Shapes: ``b`` batch, ``s_q`` query length, ``s_kv`` key length, ``d`` d_model,
``h`` query heads, ``h_kv`` key/value heads, ``d_h`` head_dim.
Masks are bool and **True where a token is real / may be attended to**.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from encoder_transformer.dropout import Dropout
from encoder_transformer.positional import RotaryEmbedding


class AttentionCache(Protocol):
    """What attention needs from a key/value cache (``decoder_transformer.cache``).

    ``length`` is the number of positions stored so far. ``update`` appends new keys
    and values ``(b, h_kv, s_new, d_h)`` and returns all of them
    ``(b, h_kv, length, d_h)``; ``read`` returns what is stored without appending.
    """

    @property
    def length(self) -> int: ...

    def update(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]: ...

    def read(self) -> tuple[Tensor, Tensor]: ...


def causal_mask(query_length: int, key_length: int, device=None) -> Tensor:
    """Which keys each query may see when the queries are the *last* positions.

    Query ``i`` sits at position ``key_length - query_length + i`` and may attend to
    every key at or before it. With a KV cache the keys include earlier steps, so the
    square lower-triangular mask becomes this bottom-right aligned one.

    Returns:
        ``(s_q, s_kv)`` bool, True where attention is allowed.

    >>> causal_mask(2, 4).int()
    tensor([[1, 1, 1, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    offset = key_length - query_length
    query_positions = torch.arange(query_length, device=device).unsqueeze(1) + offset
    key_positions = torch.arange(key_length, device=device).unsqueeze(0)
    return key_positions <= query_positions


def attention_mask(
    key_padding_mask: Tensor | None,
    query_length: int,
    key_length: int,
    is_causal: bool,
) -> Tensor | None:
    """Combines key padding and causality into one mask for SDPA.

    A query row with no visible key would make softmax divide 0 by 0 (NaN). Such a row
    only arises for a query that is itself padding (or a source made only of padding),
    whose output is never used, so it is allowed to see every key instead.

    Args:
        key_padding_mask: ``(b, s_kv)``, True for real tokens, or None.
        query_length: ``s_q``.
        key_length: ``s_kv``.
        is_causal: Whether query ``i`` may only see keys up to its own position.

    Returns:
        Bool, broadcastable to ``(b, h, s_q, s_kv)``: ``(b, 1, 1, s_kv)`` for padding
        alone, ``(s_q, s_kv)`` for causality alone, ``(b, 1, s_q, s_kv)`` for both;
        None when nothing is masked.

    >>> attention_mask(torch.tensor([[True, True, False]]), 3, 3, True).int()
    tensor([[[[1, 0, 0],
              [1, 1, 0],
              [1, 1, 0]]]], dtype=torch.int32)
    >>> attention_mask(torch.tensor([[False, False]]), 1, 2, False).int()
    tensor([[[[1, 1]]]], dtype=torch.int32)
    """
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask[:, None, None, :]  # (b, 1, 1, s_kv)
    if is_causal:
        causal = causal_mask(query_length, key_length, device=_device(key_padding_mask))
        mask = causal if mask is None else mask & causal
    if mask is None:
        return None
    return mask | ~mask.any(dim=-1, keepdim=True)


def _device(tensor: Tensor | None) -> torch.device | None:
    return None if tensor is None else tensor.device


# Longest key sequence for which the math kernel beats the CPU flash kernel in bf16.
CPU_MATH_KERNEL_MAX_KEYS = 256


def sdpa_backend(queries: Tensor, key_length: int) -> contextlib.AbstractContextManager:
    """Which SDPA kernel to run: PyTorch's choice, except bf16/fp16 on a CPU.

    Measured on an AVX-512 BF16 CPU (torch 2.13, forward + backward, 4 heads of 64):
    in bf16 the CPU flash kernel is slower than the plain (math) kernel up to 256 keys
    (5x at 16 keys, 1.5x at 64-128, even for one-query decoding steps); in fp32 the
    flash kernel is the faster one. Translation sentences are short, so this matters.
    """
    low_precision = queries.dtype in (torch.bfloat16, torch.float16)
    short = key_length <= CPU_MATH_KERNEL_MAX_KEYS
    if queries.device.type == "cpu" and low_precision and short:
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


# Most queries at once that a decoding step attends with (e.g. the beams of one
# sentence, folded over its source), for the written-out CPU path below.
DECODING_STEP_MAX_QUERIES = 16


def attend(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """``softmax(Q Kᵀ · scale) V`` on SDPA, with padding and (bottom-right) causality.

    Keys and values in a wider type than the queries (a KV cache kept in fp32 for
    bf16 decoding on a CPU, see ``decoder_transformer.cache``) make the attention run
    in their type; the result comes back in the queries' type.

    Args:
        queries: ``(b, h, s_q, d_qk)``.
        keys: ``(b, h_kv, s_kv, d_qk)``; ``h_kv`` divides ``h`` (GQA/MQA).
        values: ``(b, h_kv, s_kv, d_v)``.
        key_padding_mask: ``(b, s_kv)`` bool, True for real keys, or None.
        is_causal: Query ``i`` (at position ``s_kv - s_q + i``) sees keys up to it.
        dropout: Dropout probability on the attention weights (pass 0 in eval).
        scale: Factor on the scores; None means ``1/√d_qk``.

    Returns:
        ``(b, h, s_q, d_v)``.
    """
    if keys.dtype != queries.dtype:
        attended = attend(
            queries.to(keys.dtype),
            keys,
            values,
            key_padding_mask,
            is_causal,
            dropout,
            scale,
        )
        return attended.to(queries.dtype)
    query_length, key_length = queries.size(2), keys.size(2)
    # A single new query comes after every cached key: causality is automatic.
    is_causal = is_causal and query_length > 1
    if not is_causal and is_cpu_decoding_step(queries, dropout):
        return attend_written_out(queries, keys, values, key_padding_mask, scale)
    if query_length == 1 and queries.size(1) > keys.size(1):
        return _attend_one_query_per_group(
            queries, keys, values, key_padding_mask, dropout, scale
        )
    # Without padding, a square causal mask is SDPA's own (fastest) case.
    builtin_causal = is_causal and key_padding_mask is None
    builtin_causal = builtin_causal and query_length == key_length
    mask = None
    if not builtin_causal:
        mask = attention_mask(key_padding_mask, query_length, key_length, is_causal)
    # SDPA scales by 1/√d_qk so that dot products of random d_qk-dimensional vectors
    # keep unit variance and softmax does not saturate.
    with sdpa_backend(queries, key_length):
        return F.scaled_dot_product_attention(
            queries,
            keys,
            values,
            attn_mask=mask,
            dropout_p=dropout,
            is_causal=builtin_causal,
            scale=scale,
            enable_gqa=keys.size(1) != queries.size(1),
        )


def is_cpu_decoding_step(queries: Tensor, dropout: float) -> bool:
    """Whether :func:`attend_written_out` is the faster way for these queries.

    A decoding step attends from one query per row (or a sentence's few beams) over
    a cache. On a CPU, SDPA's kernels are built for many queries: for such a step
    in fp32 the flash kernel spends more on its setup than on the arithmetic, and in
    bf16 SDPA and batched products alike copy the cached keys and values (a view of
    a larger buffer) before multiplying. Two batched fp32 products read them where
    they are (``bench/README.md``, "Decoding speed"), hence the fp32 cache. Inference
    only: training keeps SDPA's fused backward pass.
    """
    return (
        not torch.is_grad_enabled()
        and queries.device.type == "cpu"
        and queries.dtype == torch.float32
        and queries.size(-2) <= DECODING_STEP_MAX_QUERIES
        and dropout == 0.0
    )


def attend_written_out(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """``softmax(Q Kᵀ · scale) V`` as two batched products (no causal mask).

    With shared key/value heads (GQA/MQA), the ``h / h_kv`` query heads of a group
    are stacked as queries of their key/value head, so nothing is repeated.

    Args:
        queries: ``(b, h, s_q, d_qk)``.
        keys: ``(b, h_kv, s_kv, d_qk)`` (a view of a cache is fine).
        values: ``(b, h_kv, s_kv, d_v)``.
        key_padding_mask: ``(b, s_kv)`` bool, True for real keys, or None.
        scale: Factor on the scores; None means ``1/√d_qk``.

    Returns:
        ``(b, h, s_q, d_v)``.
    """
    batch, heads, query_length, width = queries.shape
    scale = width**-0.5 if scale is None else scale
    grouped = queries.reshape(batch, keys.size(1), -1, width)  # (b, h_kv, ·, d_qk)
    scores = torch.matmul(grouped * scale, keys.transpose(-2, -1))  # (b, h_kv, ·, s_kv)
    mask = attention_mask(key_padding_mask, 1, keys.size(-2), is_causal=False)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    attended = torch.matmul(scores.softmax(dim=-1), values)
    return attended.view(batch, heads, query_length, -1)


def _attend_one_query_per_group(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    key_padding_mask: Tensor | None,
    dropout: float,
    scale: float | None,
) -> Tensor:
    """:func:`attend` for one decoding step ``(b, h, 1, d_qk)`` with shared KV heads.

    The ``h / h_kv`` query heads of a group read the same keys, so they are stacked as
    that many queries of one head: ``(b, h_kv, h / h_kv, d_qk)``. This is one matrix
    product per key/value head over the cache, where SDPA's ``enable_gqa`` would
    repeat the keys and values per query head (2.5x slower for MQA on a CPU, at batch
    64 and 256 cached positions; far more for MLA's single wide latent head).
    """
    batch, heads, _, width = queries.shape
    grouped = queries.view(batch, keys.size(1), heads // keys.size(1), width)
    mask = attention_mask(key_padding_mask, 1, keys.size(2), is_causal=False)
    with sdpa_backend(queries, keys.size(2)):
        attended = F.scaled_dot_product_attention(
            grouped, keys, values, attn_mask=mask, dropout_p=dropout, scale=scale
        )  # (b, h_kv, h / h_kv, d_v)
    return attended.view(batch, heads, 1, -1)


def merge_heads(heads: Tensor) -> Tensor:
    """``(b, h, s, d_h)`` → ``(b, s, h·d_h)``, the input of the output projection."""
    batch, _, length, _ = heads.shape
    return heads.transpose(1, 2).reshape(batch, length, -1)


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
        # Inference may set one layer computing queries, keys and values at once (see
        # machine_translation.prepacked): one product for self-attention, not three.
        self.fused_projection: nn.Module | None = None

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
        if self.fused_projection is None:
            queries = self.split_heads(self.query(states), self.n_heads)
            return queries, *self.project_key_values(states)
        kv_width = self.n_kv_heads * self.head_dim
        queries, keys, values = self.fused_projection(states).split(
            [self.n_heads * self.head_dim, kv_width, kv_width], dim=-1
        )
        return (
            self.split_heads(queries, self.n_heads),
            self.split_heads(keys, self.n_kv_heads),
            self.split_heads(values, self.n_kv_heads),
        )

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
        if key_value_states is None:
            offset = 0 if cache is None else cache.length
            queries, keys, values = self.project_self_attention(query_states)
            if self.rotary is not None:
                queries = self.rotary(queries, offset)
                keys = self.rotary(keys, offset)
            if cache is not None:
                keys, values = cache.update(keys, values)
        else:
            # (b, s_q, d) -> (b, h, s_q, d_h)
            queries = self.split_heads(self.query(query_states), self.n_heads)
            if cache is not None and cache.length > 0:
                # The source does not change while decoding: reuse its keys/values.
                keys, values = cache.read()
            else:
                keys, values = self.project_key_values(key_value_states)
                if cache is not None:
                    keys, values = cache.update(keys, values)

        attended = attend(
            queries,
            keys,
            values,
            key_padding_mask,
            is_causal,
            dropout=self.attention_dropout if self.training else 0.0,
        )
        return self.dropout(self.output(merge_heads(attended)))
