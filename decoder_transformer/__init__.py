"""The decoder block, the decoder stack with a tied LM head, the KV cache, and a GPT."""

from decoder_transformer.block import DecoderBlock
from decoder_transformer.cache import DecoderCache
from decoder_transformer.compaction import Compaction
from decoder_transformer.decoder import TransformerDecoder
from decoder_transformer.gpt import GPT
from decoder_transformer.kv_cache import KeyValueCache
from decoder_transformer.latent_cache import LatentCache

__all__ = [
    "GPT",
    "Compaction",
    "DecoderBlock",
    "DecoderCache",
    "KeyValueCache",
    "LatentCache",
    "TransformerDecoder",
]
