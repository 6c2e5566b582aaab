"""Attention masks: which keys each query may see, as pure functions.

Two reasons hide a key from a query: the key is padding, or (in a decoder) it comes
after the query. :func:`attention_mask` joins the two into the one bool mask that
scaled dot-product attention takes, and keeps every row non-empty so that softmax
never divides 0 by 0.

Shapes: ``b`` batch, ``s_q`` query length, ``s_kv`` key length, ``h`` heads.
Masks are bool and **True where a token is real / may be attended to**.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
