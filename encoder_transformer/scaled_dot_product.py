"""Scaled dot-product attention: ``softmax(Q Kᵀ / √d_h) V`` on heads, as a function.

Each query token builds a weighted average of value vectors; the weights are the
softmax of its scaled dot products with the keys. :func:`attend` computes this for
heads already split, ``(b, h, s, d_h)``, with padding and causality, and with fewer
key/value heads than query heads (GQA, MQA). The modules that project hidden states
into heads (``attention.MultiHeadAttention``, ``latent_attention``) call it.

The arithmetic is PyTorch's ``scaled_dot_product_attention`` (SDPA), except where a
measured faster way exists on a CPU: the kernel choice for short bf16 inputs
(:func:`sdpa_backend`) and two plain batched products for a decoding step
(:func:`attend_written_out`), and dropout on the attention weights while training on
a CPU (:func:`attend_with_cpu_dropout`). :func:`attend_with_weights` writes the
softmax out and returns the attention weights too, for showing what a model attends
to.

One concept, past 300 lines: every function here is a way :func:`attend` computes
the same formula (or, for :func:`attend_with_weights`, returns its weights too), and
the tests hold each path equal to the others; split, a reader would lose that.

Shapes: ``b`` batch, ``s_q`` query length, ``s_kv`` key length, ``h`` query heads,
``h_kv`` key/value heads, ``d_qk`` query/key width, ``d_v`` value width.
Masks are bool and **True where a token is real / may be attended to**.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from encoder_transformer.dropout import dropout as drop
from encoder_transformer.masks import attention_mask

# Longest key sequence for which the math kernel beats the CPU flash kernel in bf16.
CPU_MATH_KERNEL_MAX_KEYS = 256


def sdpa_backend(queries: Tensor, key_length: int) -> contextlib.AbstractContextManager:
    """Which SDPA kernel to run: PyTorch's choice, except bf16/fp16 on a CPU.

    Measured on an AVX-512 BF16 CPU (torch 2.13, forward + backward, 4 heads of 64):
    in bf16 the CPU flash kernel is slower than the plain (math) kernel up to 256 keys
    (5x at 16 keys, 1.5x at 64-128, even for one-query decoding steps); in fp32 the
    flash kernel is the faster one. Translation sentences are short, so this matters.
    """
    if runs_math_kernel(queries, key_length):
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def runs_math_kernel(queries: Tensor, key_length: int) -> bool:
    """Whether :func:`sdpa_backend` picks the math kernel: short bf16/fp16 on a CPU."""
    low_precision = queries.dtype in (torch.bfloat16, torch.float16)
    short = key_length <= CPU_MATH_KERNEL_MAX_KEYS
    return queries.device.type == "cpu" and low_precision and short


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
    bf16 decoding on a CPU, see ``decoder_transformer.kv_cache``) make the attention
    run in their type; the result comes back in the queries' type.

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
    if dropout and runs_math_kernel(queries, key_length):
        mask = attention_mask(key_padding_mask, query_length, key_length, is_causal)
        return attend_with_cpu_dropout(queries, keys, values, mask, dropout, scale)
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


def attend_with_cpu_dropout(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    mask: Tensor | None,
    dropout: float,
    scale: float | None = None,
) -> Tensor:
    """What SDPA's math kernel computes for bf16/fp16 on a CPU, with a cheaper dropout.

    That kernel (which :func:`sdpa_backend` picks for short sequences) works in fp32
    and draws the dropout mask of the attention weights with ``bernoulli_``: on a
    Zen 4 EPYC 0.67 ms for the 146 x 4 x 14 x 14 weights of one batch, 7.5 ns a
    weight. The same arithmetic written out (in fp32, outside autocast) takes
    :func:`encoder_transformer.dropout.dropout`'s mask instead (0.17 ms). Training
    only: SDPA's math kernel is itself these operations, so autograd's backward pass
    is the same too.

    Args:
        queries: ``(b, h, s_q, d_qk)``.
        keys: ``(b, h_kv, s_kv, d_qk)``; ``h_kv`` divides ``h`` (GQA/MQA).
        values: ``(b, h_kv, s_kv, d_v)``.
        mask: Bool, broadcastable to ``(b, h, s_q, s_kv)``, True where a query may
            attend (``masks.attention_mask``), or None.
        dropout: Dropout probability on the attention weights.
        scale: Factor on the scores; None means ``1/√d_qk``.

    Returns:
        ``(b, h, s_q, d_v)`` in the queries' type.
    """
    dtype, group = queries.dtype, queries.size(1) // keys.size(1)
    scale = queries.size(-1) ** -0.5 if scale is None else scale
    with torch.autocast(queries.device.type, enabled=False):
        queries, keys, values = queries.float(), keys.float(), values.float()
        if group > 1:  # as SDPA's enable_gqa: each key/value head serves a group
            keys = keys.repeat_interleave(group, dim=1)
            values = values.repeat_interleave(group, dim=1)
        scores = torch.matmul(queries * scale, keys.transpose(-2, -1))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = drop(scores.softmax(dim=-1), dropout)  # (b, h, s_q, s_kv)
        return torch.matmul(weights, values).to(dtype)


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


def attend_with_weights(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`attend` with the softmax written out, returning its weights as well.

    For reading what a model attends to (an alignment heat map), not for speed: the
    ``(b, h, s_q, s_kv)`` weights are materialized, which SDPA's kernels avoid, and
    there is no dropout. Shared key/value heads (GQA/MQA) are repeated per query
    head, as SDPA's ``enable_gqa`` does.

    Args:
        queries: ``(b, h, s_q, d_qk)``.
        keys: ``(b, h_kv, s_kv, d_qk)``; ``h_kv`` divides ``h``.
        values: ``(b, h_kv, s_kv, d_v)``.
        key_padding_mask: ``(b, s_kv)`` bool, True for real keys, or None.
        is_causal: Query ``i`` (at position ``s_kv - s_q + i``) sees keys up to it.
        scale: Factor on the scores; None means ``1/√d_qk``.

    Returns:
        ``(attended, weights)``: ``(b, h, s_q, d_v)`` in the queries' type, and
        ``(b, h, s_q, s_kv)``, each row summing to 1 over the keys (0 on masked ones).

    >>> q, kv = torch.ones(1, 2, 3, 4), torch.ones(1, 1, 2, 4)
    >>> attended, weights = attend_with_weights(q, kv, kv, torch.tensor([[1, 0]]) > 0)
    >>> weights[0, 0]
    tensor([[1., 0.],
            [1., 0.],
            [1., 0.]])
    """
    dtype = queries.dtype
    queries = queries.to(keys.dtype)  # a wider cache type wins, as in attend
    group = queries.size(1) // keys.size(1)
    keys = keys.repeat_interleave(group, dim=1)  # (b, h, s_kv, d_qk)
    values = values.repeat_interleave(group, dim=1)
    scale = queries.size(-1) ** -0.5 if scale is None else scale
    scores = torch.matmul(queries * scale, keys.transpose(-2, -1))  # (b, h, s_q, s_kv)
    mask = attention_mask(key_padding_mask, queries.size(2), keys.size(2), is_causal)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return torch.matmul(weights, values).to(dtype), weights


def merge_heads(heads: Tensor) -> Tensor:
    """``(b, h, s, d_h)`` → ``(b, s, h·d_h)``, the input of the output projection."""
    batch, _, length, _ = heads.shape
    return heads.transpose(1, 2).reshape(batch, length, -1)
