"""The Transformer encoder: N blocks of self-attention and feed-forward.

The encoder reads the whole source sentence at once. In each block every token attends
to every other real token (no causal mask: the source is fully known), then passes
through the feed-forward network; each sublayer sits in a residual connection with its
normalization. The output is one contextual vector per source token, which the decoder
reads through cross-attention.

Shapes: ``b`` batch, ``s`` source length, ``d`` d_model, ``v`` vocabulary.
"""

from __future__ import annotations

from torch import Tensor, nn

from encoder_transformer.attention import MultiHeadAttention
from encoder_transformer.config import TransformerConfig
from encoder_transformer.embedding import TransformerEmbedding
from encoder_transformer.feedforward import build_feedforward
from encoder_transformer.latent_attention import MultiHeadLatentAttention
from encoder_transformer.normalization import build_norm, residual
from encoder_transformer.positional import RotaryEmbedding


def build_rotary(config: TransformerConfig) -> RotaryEmbedding | None:
    """The rotary embedding that the self-attention layers of one stack share.

    It rotates whole heads (``head_dim``) in standard attention, and only the
    decoupled rotary part (``rope_head_dim``) in latent attention.
    """
    if config.positions != "rope":
        return None
    width = config.rope_head_dim if config.attention == "latent" else config.head_dim
    return RotaryEmbedding(width, config.max_positions, config.rope_base)


def build_self_attention(
    config: TransformerConfig, rotary: RotaryEmbedding | None = None
) -> MultiHeadAttention | MultiHeadLatentAttention:
    """The self-attention layer ``config.attention`` asks for (standard or latent)."""
    if config.attention == "standard":
        return build_attention(config, rotary)
    return MultiHeadLatentAttention(
        config.d_model,
        config.n_heads,
        config.kv_latent_dim,
        config.q_latent_dim,
        rotary,
        dropout=config.dropout,
        attention_dropout=config.attention_dropout,
        bias=config.bias,
        norm_eps=config.norm_eps,
    )


def build_attention(
    config: TransformerConfig, rotary: RotaryEmbedding | None = None
) -> MultiHeadAttention:
    """A standard (MHA/GQA/MQA) attention layer with the sizes of ``config``.

    Cross-attention always uses this one: MLA is for self-attention.
    """
    return MultiHeadAttention(
        config.d_model,
        config.n_heads,
        config.n_kv_heads,
        dropout=config.dropout,
        attention_dropout=config.attention_dropout,
        bias=config.bias,
        rotary=rotary,
    )


def build_final_norm(config: TransformerConfig) -> nn.Module:
    """The norm after a stack's last block (an identity for post-norm).

    Pre-norm leaves the residual stream unnormalized, so it is normalized once at the
    end; post-norm blocks already end with a norm.
    """
    if config.norm_placement == "pre":
        return build_norm(config.norm, config.d_model, config.norm_eps, config.bias)
    return nn.Identity()


class EncoderBlock(nn.Module):
    """Self-attention then feed-forward, each with its residual and norm."""

    def __init__(
        self, config: TransformerConfig, rotary: RotaryEmbedding | None = None
    ) -> None:
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.self_attention = build_self_attention(config, rotary)
        self.self_attention_norm = build_norm(
            config.norm, config.d_model, config.norm_eps, config.bias
        )
        self.feedforward = build_feedforward(config)
        self.feedforward_norm = build_norm(
            config.norm, config.d_model, config.norm_eps, config.bias
        )

    def forward(self, hidden_states: Tensor, padding_mask: Tensor | None) -> Tensor:
        """``(b, s, d)`` with ``(b, s)`` mask (True = real token) → ``(b, s, d)``."""
        hidden_states = residual(
            hidden_states,
            lambda x: self.self_attention(x, key_padding_mask=padding_mask),
            self.self_attention_norm,
            self.pre_norm,
        )
        return residual(
            hidden_states, self.feedforward, self.feedforward_norm, self.pre_norm
        )


class TransformerEncoder(nn.Module):
    """Token embedding, positions, ``config.encoder_layers`` blocks, final norm.

    Args:
        config: The architecture.
        token_embedding: The source embedding table ``(v, d)``, which the
            encoder-decoder model may share with the decoder.
    """

    def __init__(self, config: TransformerConfig, token_embedding: nn.Embedding):
        super().__init__()
        self.embedding = TransformerEmbedding(config, token_embedding)
        rotary = build_rotary(config)
        self.blocks = nn.ModuleList(
            EncoderBlock(config, rotary) for _ in range(config.encoder_layers)
        )
        self.final_norm = build_final_norm(config)

    def forward(self, source_ids: Tensor, source_mask: Tensor | None = None) -> Tensor:
        """Encodes a batch of source sentences.

        Args:
            source_ids: ``(b, s)`` token ids.
            source_mask: ``(b, s)`` bool, True for real tokens; None if no padding.

        Returns:
            ``(b, s, d)`` encoder hidden states (padded positions hold values that
            nothing should read).
        """
        hidden_states = self.embedding(source_ids)
        for block in self.blocks:
            hidden_states = block(hidden_states, source_mask)
        return self.final_norm(hidden_states)
