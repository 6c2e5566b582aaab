"""The encoder-decoder translation model: ``p(target | source)``.

The encoder reads the source sentence into one vector per token; the decoder writes
the target one token at a time, attending to its own past (causal self-attention) and
to the encoder's output (cross-attention). Training scores a whole target at once
(:meth:`Seq2SeqTransformer.forward`); search encodes once (:meth:`encode`) and then
extends hypotheses with one cached step at a time (:meth:`decode_step`).

Embeddings: with ``share_embeddings`` (a joint source-target vocabulary) one matrix
serves the encoder input, the decoder input and the LM head (three-way tying);
otherwise the encoder has its own source embedding and only the decoder's input and
output are tied.

Shapes: ``b`` batch, ``s_src`` source length, ``s_tgt`` target length, ``d`` d_model,
``v`` target vocabulary. Masks are bool, True for real tokens.
"""

from __future__ import annotations

from torch import Tensor, nn

from decoder_transformer.cache import DecoderCache
from decoder_transformer.decoder import TransformerDecoder
from encoder_transformer.config import TransformerConfig
from encoder_transformer.embedding import build_token_embedding
from encoder_transformer.encoder import TransformerEncoder


class Seq2SeqTransformer(nn.Module):
    """Transformer encoder + decoder with tied embeddings.

    Args:
        config: The architecture.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        target_embedding = build_token_embedding(
            config.vocab_size, config.d_model, config.pad_id
        )
        source_embedding = (
            target_embedding
            if config.share_embeddings
            else build_token_embedding(
                config.source_vocab_size, config.d_model, config.pad_id
            )
        )
        self.encoder = TransformerEncoder(config, source_embedding)
        self.decoder = TransformerDecoder(config, target_embedding)

    def encode(self, source_ids: Tensor, source_mask: Tensor | None = None) -> Tensor:
        """``(b, s_src)`` ids and mask → ``(b, s_src, d)`` encoder hidden states."""
        return self.encoder(source_ids, source_mask)

    def forward(
        self,
        source_ids: Tensor,
        source_mask: Tensor | None,
        target_ids: Tensor,
        target_mask: Tensor | None = None,
    ) -> Tensor:
        """Scores whole target sequences given their sources (teacher forcing).

        Args:
            source_ids: ``(b, s_src)``.
            source_mask: ``(b, s_src)`` True for real tokens, or None.
            target_ids: ``(b, s_tgt)`` decoder inputs, BOS first.
            target_mask: ``(b, s_tgt)`` True for real tokens, or None.

        Returns:
            ``(b, s_tgt, v)`` logits; position t predicts target token t+1.
        """
        encoder_hidden_states = self.encode(source_ids, source_mask)
        return self.decoder(target_ids, target_mask, encoder_hidden_states, source_mask)

    def forward_with_cross_attention(
        self,
        source_ids: Tensor,
        source_mask: Tensor | None,
        target_ids: Tensor,
        target_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward`, also returning the decoder's cross-attention weights.

        Run on a translation already chosen (teacher forcing), this shows which
        source tokens each target position read: the alignment heat map of
        ``machine_translation.serving``.

        Args:
            source_ids, source_mask, target_ids, target_mask: As in :meth:`forward`.

        Returns:
            ``(logits, weights)``: ``(b, s_tgt, v)`` as :meth:`forward`, and
            ``(decoder_layers, b, h, s_tgt, s_src)``; row t is what the position
            that predicts target token t+1 attended to.
        """
        encoder_hidden_states = self.encode(source_ids, source_mask)
        return self.decoder.forward_with_cross_attention(
            target_ids, target_mask, encoder_hidden_states, source_mask
        )

    def new_cache(self, capacity: int | None = None) -> DecoderCache:
        """An empty decoder cache for :meth:`decode_step`.

        ``capacity`` preallocates that many target positions (e.g. the longest
        output a search allows); without it the cache grows as needed.
        """
        return self.decoder.new_cache(capacity)

    def decode_step(
        self,
        target_ids: Tensor,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
    ) -> Tensor:
        """Scores the next target token(s), extending ``cache`` in place.

        Args:
            target_ids: ``(b, s_new)`` tokens at positions ``cache.length ..``
                (``s_new = 1`` in search; more to prime the cache with a prefix).
            encoder_hidden_states: ``(b, s_src, d)`` from :meth:`encode`; only read
                at the first step, when cross-attention keys/values are cached.
            source_mask: ``(b, s_src)`` True for real source tokens, or None.
            cache: From :meth:`new_cache`; reorder it along the batch with
                ``cache.reorder(indices)`` when hypotheses are pruned or reordered.

        Returns:
            ``(b, s_new, v)`` logits.
        """
        return self.decoder.step(target_ids, cache, encoder_hidden_states, source_mask)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, each shared (tied) tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
