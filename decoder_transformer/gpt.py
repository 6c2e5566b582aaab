"""A decoder-only language model (GPT) built from the same decoder blocks.

Drop the encoder and the cross-attention from the translation decoder and what remains
is a GPT: token embedding, positions, causal self-attention blocks, and an LM head tied
to the embedding. It learns ``p(x_t | x_<t)`` over plain text and generates by feeding
its own predictions back, one cached step at a time.

Shapes: ``b`` batch, ``s`` sequence, ``v`` vocabulary. Masks are bool, True for real
tokens.
"""

from __future__ import annotations

from torch import Tensor, nn

from decoder_transformer.cache import DecoderCache
from decoder_transformer.decoder import TransformerDecoder
from encoder_transformer.config import TransformerConfig
from encoder_transformer.embedding import build_token_embedding


class GPT(nn.Module):
    """A causal language model: ``config.decoder_layers`` blocks, no cross-attention.

    Args:
        config: The architecture (``vocab_size``, ``decoder_layers`` and the block
            options; encoder fields are ignored).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        token_embedding = build_token_embedding(
            config.vocab_size, config.d_model, config.pad_id
        )
        self.decoder = TransformerDecoder(
            config, token_embedding, cross_attention=False
        )

    def forward(self, token_ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``(b, s)`` ids (with an optional ``(b, s)`` mask) → ``(b, s, v)`` logits."""
        return self.decoder(token_ids, padding_mask)

    def new_cache(self, capacity: int | None = None) -> DecoderCache:
        """An empty KV cache for :meth:`step`, preallocated for ``capacity`` tokens."""
        return self.decoder.new_cache(capacity)

    def step(
        self,
        token_ids: Tensor,
        cache: DecoderCache,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Scores ``(b, s_new)`` new tokens after those in ``cache``; ``(b, s_new, v)``.

        ``padding_mask``, if given, is ``(b, cache.length + s_new)``.
        """
        return self.decoder.step(token_ids, cache, target_mask=padding_mask)
