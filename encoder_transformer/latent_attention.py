"""Multi-head latent attention (MLA, DeepSeek-V2): the cache keeps one small latent.

Standard attention caches, per token and layer, ``h_kv`` keys and values of ``d_h``
numbers each. GQA and MQA shrink that by letting query heads share key/value heads.
MLA (DeepSeek-AI 2024, "DeepSeek-V2", section 2.1) compresses instead. A token's hidden
state ``x`` is projected *down* to a latent ``c_kv`` of ``d_c`` numbers
(``kv_latent_dim``), and every head's key and value are projected *up* from it::

    c_kv      = RMSNorm(W_down x)                 (b, s, d_c)     cached
    k_i, v_i  = W_key_i c_kv, W_value_i c_kv      (b, h, s, d_h)  recomputable

Each head keeps its own keys and values (unlike MQA), but all are linear functions of
one ``d_c``-wide vector, and that vector is all the cache has to hold.

**Decoupled RoPE.** RoPE rotates a key by its position, ``R_n W_key_i c_kv``, and the
rotation would sit between the query and ``W_key_i``, which spoils the absorption
below. So the positions go into a separate, small rotary part: each query head gets an
extra ``d_r``-wide slice ``q_i^R`` (``rope_head_dim``), and all heads share ONE rotary
key ``k^R = RoPE(W_rope x)`` of ``d_r`` numbers, computed from the hidden state and
cached next to ``c_kv``. A head's query and key are the concatenations
``[q_i ; q_i^R]`` and ``[k_i ; k^R]``, scores are scaled by ``1/√(d_h + d_r)``, and
values stay ``d_h`` wide. With additive positions (or none) there is no rotary part.

**Query compression** (``q_latent_dim``, optional): ``q = W_q_up RMSNorm(W_q_down x)``.
It saves parameters and training activations, not cache.

**Absorbing the up-projections when decoding.** A score is
``q_iᵀ k_ij = q_iᵀ W_key_i c_j = (W_key_iᵀ q_i)ᵀ c_j``, and a head's output is
``Σ_j p_ij W_value_i c_j = W_value_i (Σ_j p_ij c_j)``. So one cached step multiplies
each query head by ``W_key_iᵀ`` (it becomes ``d_c`` wide), attends straight over the
cached ``[c_kv ; k^R]`` vectors, shared by all heads like MQA's single key/value head,
and up-projects the one averaged latent per head. Every step thus reads the cache once,
instead of re-expanding all ``s`` cached latents into ``h`` keys and values.

**Why the latent is normalized** (as in DeepSeek-V2): a down- and an up-projection in a
row can trade scale freely (``W_down·a``, ``W_key/a``), so without a norm the latent's
size is arbitrary; the RMSNorm pins it, which keeps the cached numbers in a known range
(this matters in bf16) at the cost of one norm of ``d_c`` numbers per token.

Shapes: ``b`` batch, ``s_q`` query length, ``s_kv`` key length, ``d`` d_model, ``h``
heads, ``d_h`` head_dim, ``d_c`` kv_latent_dim, ``d_r`` rope_head_dim (0 without RoPE).
Masks are bool and **True where a token is real / may be attended to**.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import torch
from torch import Tensor, nn

from encoder_transformer.dropout import Dropout
from encoder_transformer.positional import RotaryEmbedding
from encoder_transformer.scaled_dot_product import attend, merge_heads


class LatentAttentionCache(Protocol):
    """What MLA needs from its cache (``decoder_transformer.latent_cache.LatentCache``).

    ``length`` is the number of positions stored so far; ``update`` appends one
    ``(b, s_new, d_c + d_r)`` entry per new token (its latent, then its rotary key) and
    returns all of them, ``(b, length, d_c + d_r)``.
    """

    @property
    def length(self) -> int: ...

    def update(self, entries: Tensor) -> Tensor: ...


class MultiHeadLatentAttention(nn.Module):
    """Self-attention whose keys and values are up-projected from a cached latent.

    Args:
        d_model: Width of the input and output hidden states.
        n_heads: Number of heads ``h``; ``d_h = d_model // n_heads``.
        kv_latent_dim: Width ``d_c`` of the key/value latent.
        q_latent_dim: Width of the query latent, or None to project queries directly.
        rotary: Rotary embedding of width ``d_r`` for the decoupled rotary part, or
            None for no rotary part.
        dropout: Dropout after the output projection.
        attention_dropout: Dropout on the attention weights (training only).
        bias: Whether the down, query and output projections have biases. The
            up-projections never do: a key bias adds the same amount to all scores of
            a query (softmax ignores it), and a value bias passes through the
            attention average unchanged, so the output bias covers it.
        norm_eps: Epsilon of the latents' RMSNorm.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        kv_latent_dim: int,
        q_latent_dim: int | None = None,
        rotary: RotaryEmbedding | None = None,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        bias: bool = True,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.kv_latent_dim = kv_latent_dim
        # The rotary width d_r is that of the rotary embedding's angle table.
        self.rope_head_dim = 0 if rotary is None else rotary.cos.size(-1)
        self.rotary = rotary
        self.attention_dropout = attention_dropout
        # Decoding steps (one query) attend in latent space, the up-projections
        # absorbed; False re-expands the cached latents at every step. Same result.
        self.absorb = True
        query_width = n_heads * (self.head_dim + self.rope_head_dim)
        if q_latent_dim is None:
            self.query = nn.Linear(d_model, query_width, bias=bias)
        else:
            self.query = nn.Sequential(
                OrderedDict(
                    down=nn.Linear(d_model, q_latent_dim, bias=bias),
                    norm=nn.RMSNorm(q_latent_dim, eps=norm_eps),
                    up=nn.Linear(q_latent_dim, query_width, bias=bias),
                )
            )
        # One matrix product gives the latent and the shared rotary key.
        self.kv_down = nn.Linear(d_model, kv_latent_dim + self.rope_head_dim, bias=bias)
        self.kv_norm = nn.RMSNorm(kv_latent_dim, eps=norm_eps)
        self.key_up = nn.Linear(kv_latent_dim, n_heads * self.head_dim, bias=False)
        self.value_up = nn.Linear(kv_latent_dim, n_heads * self.head_dim, bias=False)
        self.output = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)
        self.dropout = Dropout(dropout)

    def project_queries(self, hidden_states: Tensor, offset: int) -> Tensor:
        """Queries of ``(b, s_q, d)`` states at positions ``offset ..``.

        Returns:
            ``(b, h, s_q, d_h + d_r)``: each head's content part, then its rotated
            rotary part.
        """
        batch, length, _ = hidden_states.shape
        # (b, s_q, h·(d_h + d_r)) -> (b, h, s_q, d_h + d_r)
        queries = self.query(hidden_states).view(batch, length, self.n_heads, -1)
        queries = queries.transpose(1, 2)
        if self.rotary is None:
            return queries
        content, position = queries.split([self.head_dim, self.rope_head_dim], -1)
        return torch.cat([content, self.rotary(position, offset)], dim=-1)

    def compress(self, hidden_states: Tensor, offset: int) -> Tensor:
        """What the cache stores for ``(b, s, d)`` states at positions ``offset ..``.

        Returns:
            ``(b, s, d_c + d_r)``: each token's normalized latent ``c_kv``, then its
            rotated rotary key ``k^R``.
        """
        latent, rope_key = self.kv_down(hidden_states).split(
            [self.kv_latent_dim, self.rope_head_dim], dim=-1
        )
        latent = self.kv_norm(latent)
        if self.rotary is None:
            return latent
        # (b, s, d_r) -> (b, 1, s, d_r): one rotary key "head" for all query heads.
        rope_key = self.rotary(rope_key.unsqueeze(1), offset).squeeze(1)
        return torch.cat([latent, rope_key], dim=-1)

    def expand(self, entries: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head keys and values of cached entries ``(b, s_kv, d_c + d_r)``.

        Returns:
            Keys ``(b, h, s_kv, d_h + d_r)`` (the rotary key repeated for every head)
            and values ``(b, h, s_kv, d_h)``.
        """
        latent, rope_key = entries.split([self.kv_latent_dim, self.rope_head_dim], -1)
        batch, length, _ = latent.shape
        # (b, s_kv, h·d_h) -> (b, h, s_kv, d_h)
        keys = self.key_up(latent).view(batch, length, self.n_heads, -1).transpose(1, 2)
        values = self.value_up(latent).view(batch, length, self.n_heads, -1)
        values = values.transpose(1, 2)
        if self.rotary is not None:
            shared = rope_key.unsqueeze(1).expand(-1, self.n_heads, -1, -1)
            keys = torch.cat([keys, shared], dim=-1)
        return keys, values

    def attend_to_latents(
        self,
        queries: Tensor,
        entries: Tensor,
        key_padding_mask: Tensor | None,
        is_causal: bool,
        dropout: float,
    ) -> Tensor:
        """Attention computed on the cached entries, the up-projections absorbed.

        Args:
            queries: ``(b, h, s_q, d_h + d_r)`` from :meth:`project_queries`.
            entries: ``(b, s_kv, d_c + d_r)`` from :meth:`compress` (the cache).
            key_padding_mask: ``(b, s_kv)`` True for real keys, or None.
            is_causal: Bottom-right aligned causality.
            dropout: Attention-weight dropout probability.

        Returns:
            ``(b, h, s_q, d_h)``, equal to attention over :meth:`expand`'s keys and
            values.
        """
        content, position = queries.split([self.head_dim, self.rope_head_dim], -1)
        # q_iᵀ W_key_i for every head i: (b, h, s_q, d_h) x (h, d_h, d_c). einsum, as
        # `@` would broadcast (copy) the weight to every batch row.
        key_up = self.key_up.weight.view(self.n_heads, self.head_dim, -1)
        absorbed = torch.einsum("bhqd,hdc->bhqc", content, key_up)
        latent_queries = torch.cat([absorbed, position], dim=-1)
        # (b, 1, s_kv, d_c + d_r): a single key/value head, shared as in MQA.
        latent_keys = entries.unsqueeze(1)
        latent_values = latent_keys[..., : self.kv_latent_dim]
        attended_latents = attend(
            latent_queries,
            latent_keys,
            latent_values,
            key_padding_mask,
            is_causal,
            dropout,
            # The scale of the expanded scores, whose keys are d_h + d_r wide.
            scale=(self.head_dim + self.rope_head_dim) ** -0.5,
        )  # (b, h, s_q, d_c)
        # W_value_i (Σ_j p_ij c_j): (b, h, s_q, d_c) x (h, d_h, d_c) -> (b, h, s_q, d_h)
        value_up = self.value_up.weight.view(self.n_heads, self.head_dim, -1)
        return torch.einsum("bhqc,hdc->bhqd", attended_latents, value_up)

    def forward(
        self,
        hidden_states: Tensor,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: LatentAttentionCache | None = None,
    ) -> Tensor:
        """Self-attention of ``(b, s_q, d)`` states.

        Args:
            hidden_states: ``(b, s_q, d)``.
            key_padding_mask: ``(b, s_kv)`` bool, True for real keys, covering every
                key attended to (cached ones included); None if all are real.
            is_causal: Query ``i`` sees only keys at or before its position.
            cache: The new tokens' latents and rotary keys are appended, attention
                runs over all stored ones, and queries start at ``cache.length``.

        Returns:
            ``(b, s_q, d)``.
        """
        offset = 0 if cache is None else cache.length
        queries = self.project_queries(hidden_states, offset)
        entries = self.compress(hidden_states, offset)  # (b, s_q, d_c + d_r)
        if cache is not None:
            entries = cache.update(entries)  # (b, s_kv, d_c + d_r)
        dropout = self.attention_dropout if self.training else 0.0
        if cache is not None and self.absorb and queries.size(2) == 1:
            attended = self.attend_to_latents(
                queries, entries, key_padding_mask, is_causal, dropout
            )
        else:
            # Training, full passes and prompts: with as many queries as keys,
            # expanding once is cheaper, as the s_q·s_kv dot products are d_h wide
            # instead of d_c.
            keys, values = self.expand(entries)
            attended = attend(
                queries, keys, values, key_padding_mask, is_causal, dropout
            )
        # (b, h, s_q, d_h) -> (b, s_q, h·d_h) -> (b, s_q, d)
        return self.dropout(self.output(merge_heads(attended)))
