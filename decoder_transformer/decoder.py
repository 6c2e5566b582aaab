"""The Transformer decoder: causal self-attention, cross-attention, feed-forward.

The decoder predicts the target sentence one token at a time. In each block:

1. **Masked (causal) self-attention**: target token t attends to target tokens ≤ t
   only, so that training on a whole sentence at once ("teacher forcing") never lets
   a position peek at the token it must predict.
2. **Cross-attention**: queries from the decoder, keys and values from the encoder's
   output (``encoder_hidden_states``), with source PAD positions masked. This is where
   the translation reads the source. It is optional: without it the same block is a
   GPT block.
3. **Feed-forward**, as in the encoder.

After the last block, the **LM head** turns each hidden state into a score per
vocabulary entry. It reuses the token embedding matrix (weight tying, Press & Wolf
2017): a token's input and output representations are the same vector, which saves
``v·d`` parameters and usually improves quality.

Shapes: ``b`` batch, ``s`` target length, ``s_src`` source length, ``d`` d_model,
``v`` vocabulary. Masks are bool, True for real tokens.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from decoder_transformer.cache import DecoderCache
from decoder_transformer.kv_cache import KeyValueCache
from decoder_transformer.latent_cache import LatentCache
from encoder_transformer.config import TransformerConfig
from encoder_transformer.embedding import TransformerEmbedding
from encoder_transformer.encoder import (
    build_attention,
    build_final_norm,
    build_rotary,
    build_self_attention,
)
from encoder_transformer.feedforward import build_feedforward
from encoder_transformer.latent_attention import MultiHeadLatentAttention
from encoder_transformer.normalization import build_norm, residual
from encoder_transformer.positional import RotaryEmbedding


class DecoderBlock(nn.Module):
    """Causal self-attention, optional cross-attention, feed-forward; each residual.

    Args:
        config: The architecture.
        rotary: The stack's rotary embedding (self-attention only), or None.
        cross_attention: Whether the block attends to encoder hidden states.
    """

    def __init__(
        self,
        config: TransformerConfig,
        rotary: RotaryEmbedding | None = None,
        cross_attention: bool = True,
    ) -> None:
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"

        def norm() -> nn.Module:
            return build_norm(config.norm, config.d_model, config.norm_eps, config.bias)

        self.self_attention = build_self_attention(config, rotary)
        self.self_attention_norm = norm()
        # Source and target positions are unrelated, so cross-attention has no rotary.
        self.cross_attention = build_attention(config) if cross_attention else None
        self.cross_attention_norm = norm() if cross_attention else None
        self.feedforward = build_feedforward(config)
        self.feedforward_norm = norm()

    def forward(
        self,
        hidden_states: Tensor,
        target_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        source_mask: Tensor | None = None,
        self_attention_cache: KeyValueCache | LatentCache | None = None,
        cross_attention_cache: KeyValueCache | None = None,
    ) -> Tensor:
        """One decoder block.

        Args:
            hidden_states: ``(b, s, d)`` target states (only the new positions when
                decoding with a cache).
            target_mask: ``(b, s_total)`` True for real target tokens (cached ones
                included), or None.
            encoder_hidden_states: ``(b, s_src, d)``; required with cross-attention.
            source_mask: ``(b, s_src)`` True for real source tokens, or None.
            self_attention_cache: This layer's self-attention cache, or None.
            cross_attention_cache: This layer's cross-attention cache, or None.

        Returns:
            ``(b, s, d)``.
        """
        hidden_states = residual(
            hidden_states,
            lambda x: self.self_attention(
                x,
                key_padding_mask=target_mask,
                is_causal=True,
                cache=self_attention_cache,
            ),
            self.self_attention_norm,
            self.pre_norm,
        )
        if self.cross_attention is not None:
            if encoder_hidden_states is None:
                raise ValueError("this decoder block needs encoder_hidden_states")
            hidden_states = residual(
                hidden_states,
                lambda x: self.attend_to_source(
                    x, encoder_hidden_states, source_mask, cross_attention_cache
                ),
                self.cross_attention_norm,
                self.pre_norm,
            )
        return residual(
            hidden_states, self.feedforward, self.feedforward_norm, self.pre_norm
        )

    def attend_to_source(
        self,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None,
        cache: KeyValueCache | None,
    ) -> Tensor:
        """Cross-attention, where ``g`` consecutive target rows may share one source.

        Beam search decodes the ``g`` beams of a sentence as ``g`` consecutive rows,
        which all read the same source. The source (and its cached keys and values)
        can then be stored once per sentence: with ``b_src`` source rows and
        ``g · b_src`` target rows, each sentence's ``g`` rows are folded into one
        row of ``g · s`` queries. Cross-attention treats every query on its own (no
        causal mask, no rotary positions), so the result is the same while the
        source keys and values are read once instead of ``g`` times.

        Args:
            hidden_states: ``(g · b_src, s, d)`` normalized target states.
            encoder_hidden_states: ``(b_src, s_src, d)``.
            source_mask: ``(b_src, s_src)`` True for real source tokens, or None.
            cache: This layer's cross-attention cache (``b_src`` rows), or None.

        Returns:
            ``(g · b_src, s, d)``.

        Raises:
            ValueError: the target rows are not a multiple of the source rows.
        """
        sources = cache.batch if cache is not None and cache.length else None
        sources = sources or encoder_hidden_states.size(0)
        rows, length, width = hidden_states.shape
        if rows % sources:
            raise ValueError(
                f"{rows} target rows cannot share {sources} source rows: need a "
                "multiple (the beams of each sentence in consecutive rows)"
            )
        if rows != sources:
            hidden_states = hidden_states.reshape(sources, -1, width)
        attended = self.cross_attention(
            hidden_states,
            encoder_hidden_states,
            key_padding_mask=source_mask,
            cache=cache,
        )
        return attended.reshape(rows, length, width)


class TransformerDecoder(nn.Module):
    """Embedding, ``config.decoder_layers`` decoder blocks, final norm, tied LM head.

    Args:
        config: The architecture.
        token_embedding: The target embedding table ``(v, d)``; the LM head uses the
            same matrix.
        cross_attention: False builds a decoder-only stack (the GPT).
    """

    def __init__(
        self,
        config: TransformerConfig,
        token_embedding: nn.Embedding,
        cross_attention: bool = True,
    ) -> None:
        super().__init__()
        self.has_cross_attention = cross_attention
        self.embedding = TransformerEmbedding(config, token_embedding)
        rotary = build_rotary(config)
        self.blocks = nn.ModuleList(
            DecoderBlock(config, rotary, cross_attention)
            for _ in range(config.decoder_layers)
        )
        self.final_norm = build_final_norm(config)

    def new_cache(self, capacity: int | None = None) -> DecoderCache:
        """An empty cache for :meth:`step`, preallocated for ``capacity`` positions.

        Latent self-attention (MLA) gets latent caches, standard attention KV caches.
        """
        latent = isinstance(self.blocks[0].self_attention, MultiHeadLatentAttention)
        return DecoderCache(
            len(self.blocks), self.has_cross_attention, capacity, latent=latent
        )

    def forward(
        self,
        target_ids: Tensor,
        target_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        source_mask: Tensor | None = None,
    ) -> Tensor:
        """Scores every position of whole target sequences (training, scoring).

        Args:
            target_ids: ``(b, s)`` decoder input ids (BOS first).
            target_mask: ``(b, s)`` True for real tokens, or None.
            encoder_hidden_states: ``(b, s_src, d)``, with cross-attention.
            source_mask: ``(b, s_src)`` True for real source tokens, or None.

        Returns:
            ``(b, s, v)`` logits: position t scores the token that follows t.
        """
        hidden_states = self.final_hidden_states(
            target_ids, target_mask, encoder_hidden_states, source_mask, cache=None
        )
        return self.lm_head(hidden_states)

    def step(
        self,
        target_ids: Tensor,
        cache: DecoderCache,
        encoder_hidden_states: Tensor | None = None,
        source_mask: Tensor | None = None,
        target_mask: Tensor | None = None,
    ) -> Tensor:
        """Scores new positions, reusing (and extending) the cache.

        Args:
            target_ids: ``(b, s_new)`` the next token(s), usually ``s_new = 1``; they
                sit at positions ``cache.length ..``.
            cache: From :meth:`new_cache`, updated in place.
            encoder_hidden_states: ``(b, s_src, d)``, with cross-attention.
            source_mask: ``(b, s_src)`` True for real source tokens, or None.
            target_mask: ``(b, cache.length + s_new)`` True for real target tokens,
                or None when all are real.

        Returns:
            ``(b, s_new, v)`` logits.
        """
        hidden_states = self.final_hidden_states(
            target_ids, target_mask, encoder_hidden_states, source_mask, cache=cache
        )
        return self.lm_head(hidden_states)

    def lm_head(self, hidden_states: Tensor) -> Tensor:
        """``(b, s, d)`` → ``(b, s, v)`` with the token embedding matrix (tied)."""
        return F.linear(hidden_states, self.embedding.tokens.weight)

    def final_hidden_states(
        self,
        target_ids: Tensor,
        target_mask: Tensor | None,
        encoder_hidden_states: Tensor | None,
        source_mask: Tensor | None,
        cache: DecoderCache | None,
    ) -> Tensor:
        """The final states before the LM head: embedding, blocks, final norm.

        Arguments as :meth:`forward` (without ``cache``) or :meth:`step` (with it);
        returns ``(b, s, d)``. A model with a head of its own (an int8 copy of the
        tied matrix, ``machine_translation.inference.int8``) applies it to these.
        """
        offset = 0 if cache is None else cache.length
        hidden_states = self.embedding(target_ids, offset)
        for layer, block in enumerate(self.blocks):
            hidden_states = block(
                hidden_states,
                target_mask,
                encoder_hidden_states,
                source_mask,
                self_attention_cache=None
                if cache is None
                else cache.self_attention[layer],
                cross_attention_cache=(
                    None
                    if cache is None or cache.cross_attention is None
                    else cache.cross_attention[layer]
                ),
            )
        return self.final_norm(hidden_states)
