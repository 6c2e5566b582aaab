"""Transformer building blocks and the encoder stack (plain ``torch.nn``)."""

from encoder_transformer.attention import MultiHeadAttention
from encoder_transformer.config import TransformerConfig
from encoder_transformer.embedding import TransformerEmbedding, build_token_embedding
from encoder_transformer.encoder import EncoderBlock, TransformerEncoder
from encoder_transformer.feedforward import FeedForward, SwiGLU, build_feedforward
from encoder_transformer.latent_attention import MultiHeadLatentAttention
from encoder_transformer.lora import (
    LoRAConfig,
    add_lora,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)
from encoder_transformer.lora_linear import LoRALinear
from encoder_transformer.masks import attention_mask, causal_mask
from encoder_transformer.normalization import build_norm, residual
from encoder_transformer.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
)

__all__ = [
    "EncoderBlock",
    "FeedForward",
    "LearnedPositionalEmbedding",
    "LoRAConfig",
    "LoRALinear",
    "MultiHeadAttention",
    "MultiHeadLatentAttention",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "SwiGLU",
    "TransformerConfig",
    "TransformerEmbedding",
    "TransformerEncoder",
    "add_lora",
    "attention_mask",
    "build_feedforward",
    "build_norm",
    "build_token_embedding",
    "causal_mask",
    "load_lora_state_dict",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "residual",
]
