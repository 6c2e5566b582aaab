"""The caches of a decoder stack: one per layer, reordered and compacted together."""

import torch

from decoder_transformer.cache import DecoderCache
from decoder_transformer.compaction import Compaction
from decoder_transformer.kv_cache import KeyValueCache
from decoder_transformer.latent_cache import LatentCache


def test_decoder_cache_holds_one_cache_per_layer():
    cache = DecoderCache(n_layers=3, cross_attention=True)
    assert len(cache.self_attention) == len(cache.cross_attention) == 3
    assert DecoderCache(n_layers=2, cross_attention=False).cross_attention is None
    assert cache.length == 0


def test_latent_decoder_cache_keeps_latents_for_self_attention_only():
    cache = DecoderCache(n_layers=2, latent=True)
    assert all(isinstance(layer, LatentCache) for layer in cache.self_attention)
    assert all(isinstance(layer, KeyValueCache) for layer in cache.cross_attention)


def test_compacting_equals_reordering_every_layer():
    """Self-attention targets and cross-attention sources leave alike."""
    keep = torch.tensor([True, False, True, True, False])
    compaction = Compaction.keeping(keep)
    gathered, compacted = DecoderCache(n_layers=2), DecoderCache(n_layers=2)
    for cache in (gathered, compacted):
        torch.manual_seed(1)
        for layer in cache.self_attention + cache.cross_attention:
            keys = torch.randn(5, 2, 3, 4)
            layer.update(keys, -keys)
    gathered.reorder(compaction.order)
    compacted.compact(compaction)
    layers = zip(
        gathered.self_attention + gathered.cross_attention,
        compacted.self_attention + compacted.cross_attention,
        strict=True,
    )
    for expected, actual in layers:
        for expected_part, actual_part in zip(
            expected.read(), actual.read(), strict=True
        ):
            assert torch.equal(actual_part, expected_part)
    assert compacted.length == 3
