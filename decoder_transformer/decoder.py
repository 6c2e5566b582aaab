"""The Transformer decoder: decoder blocks, a final norm and the LM head.

The decoder predicts the target sentence one token at a time. Each block
(:mod:`decoder_transformer.block`) runs causal self-attention over the target so
far, cross-attention to the encoder's output (optional: without it the stack is a
GPT), and a feed-forward network.

After the last block, the **LM head** turns each hidden state into a score per
vocabulary entry. It reuses the token embedding matrix (weight tying, Press & Wolf
2017): a token's input and output representations are the same vector, which saves
``v·d`` parameters and usually improves quality.

Shapes: ``b`` batch, ``s`` target length, ``s_src`` source length, ``d`` d_model,
``v`` vocabulary. Masks are bool, True for real tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decoder_transformer.block import DecoderBlock
from decoder_transformer.cache import DecoderCache
from encoder_transformer.config import TransformerConfig
from encoder_transformer.embedding import TransformerEmbedding
from encoder_transformer.encoder import build_final_norm, build_rotary
from encoder_transformer.latent_attention import MultiHeadLatentAttention

__all__ = ["DecoderBlock", "TransformerDecoder"]  # the block, where it was before


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

    def forward_with_cross_attention(
        self,
        target_ids: Tensor,
        target_mask: Tensor | None,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward`, also returning every layer's cross-attention weights.

        For showing which source tokens each target token was read from (an
        alignment): run it on a chosen translation, teacher-forced. The softmax is
        written out, so it is slower than :meth:`forward`.

        Args:
            target_ids: ``(b, s)`` decoder input ids (BOS first).
            target_mask: ``(b, s)`` True for real tokens, or None.
            encoder_hidden_states: ``(b, s_src, d)``.
            source_mask: ``(b, s_src)`` True for real source tokens, or None.

        Returns:
            ``(logits, weights)``: ``(b, s, v)`` as :meth:`forward`, and
            ``(layers, b, h, s, s_src)``, each row summing to 1 over the source.

        Raises:
            ValueError: the decoder has no cross-attention (a GPT).
        """
        hidden_states = self.embedding(target_ids, 0)
        weights = []
        for block in self.blocks:
            hidden_states, layer_weights = block.forward_with_cross_attention(
                hidden_states, target_mask, encoder_hidden_states, source_mask
            )
            weights.append(layer_weights)
        logits = self.lm_head(self.final_norm(hidden_states))
        return logits, torch.stack(weights)

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
