"""The decoder block, the decoder stack with a tied LM head, the KV cache, and a GPT."""

from decoder_transformer.cache import DecoderCache, KeyValueCache, LatentCache
from decoder_transformer.decoder import DecoderBlock, TransformerDecoder
from decoder_transformer.gpt import GPT

__all__ = [
    "GPT",
    "DecoderBlock",
    "DecoderCache",
    "KeyValueCache",
    "LatentCache",
    "TransformerDecoder",
]
