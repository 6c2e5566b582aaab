"""One decoder block: causal self-attention, cross-attention, feed-forward.

1. **Masked (causal) self-attention**: target token t attends to target tokens ≤ t
   only, so that training on a whole sentence at once ("teacher forcing") never lets
   a position peek at the token it must predict.
2. **Cross-attention**: queries from the decoder, keys and values from the encoder's
   output (``encoder_hidden_states``), with source PAD positions masked. This is where
   the translation reads the source. It is optional: without it the same block is a
   GPT block. :meth:`DecoderBlock.forward_with_cross_attention` also returns its
   weights: which source tokens each target position read.
3. **Feed-forward**, as in the encoder.

Shapes: ``b`` batch, ``s`` target length, ``s_src`` source length, ``d`` d_model,
``h`` heads. Masks are bool, True for real tokens.
"""

from __future__ import annotations

from torch import Tensor, nn

from decoder_transformer.kv_cache import KeyValueCache
from decoder_transformer.latent_cache import LatentCache
from encoder_transformer.config import TransformerConfig
from encoder_transformer.encoder import build_attention, build_self_attention
from encoder_transformer.feedforward import build_feedforward
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
        hidden_states = self._self_attend(
            hidden_states, target_mask, self_attention_cache
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

    def forward_with_cross_attention(
        self,
        hidden_states: Tensor,
        target_mask: Tensor | None,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` over whole targets (no cache), with the cross-attention.

        The cross-attention's softmax is written out to return its weights
        (``MultiHeadAttention.forward_with_weights``); the output is the same as
        :meth:`forward`'s, up to rounding.

        Args:
            hidden_states: ``(b, s, d)`` target states.
            target_mask: ``(b, s)`` True for real target tokens, or None.
            encoder_hidden_states: ``(b, s_src, d)``, one source per target row.
            source_mask: ``(b, s_src)`` True for real source tokens, or None.

        Returns:
            ``(b, s, d)`` as :meth:`forward`, and the weights ``(b, h, s, s_src)``:
            how much each target position's query heads read each source token.

        Raises:
            ValueError: the block has no cross-attention.
        """
        if self.cross_attention is None:
            raise ValueError("this decoder block has no cross-attention")
        weights: list[Tensor] = []

        def attend(states: Tensor) -> Tensor:
            attended, found = self.cross_attention.forward_with_weights(
                states, encoder_hidden_states, key_padding_mask=source_mask
            )
            weights.append(found)
            return attended

        hidden_states = self._self_attend(hidden_states, target_mask, None)
        hidden_states = residual(
            hidden_states, attend, self.cross_attention_norm, self.pre_norm
        )
        hidden_states = residual(
            hidden_states, self.feedforward, self.feedforward_norm, self.pre_norm
        )
        return hidden_states, weights[0]

    def _self_attend(
        self,
        hidden_states: Tensor,
        target_mask: Tensor | None,
        cache: KeyValueCache | LatentCache | None,
    ) -> Tensor:
        """The causal self-attention sublayer with its residual: ``(b, s, d)``."""
        return residual(
            hidden_states,
            lambda x: self.self_attention(
                x, key_padding_mask=target_mask, is_causal=True, cache=cache
            ),
            self.self_attention_norm,
            self.pre_norm,
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
