"""One layer's key/value cache: appending, growing, reordering, fp32 storage."""

import pytest
import torch

from decoder_transformer.kv_cache import KeyValueCache
from encoder_transformer.attention import MultiHeadAttention


def test_growing_one_step_at_a_time_equals_concatenation():
    cache = KeyValueCache()
    steps = [torch.randn(2, 3, 1, 4) for _ in range(40)]  # past several regrowths
    for step in steps:
        keys, values = cache.update(step, step * 2)
    expected = torch.cat(steps, dim=2)
    torch.testing.assert_close(keys, expected)
    torch.testing.assert_close(values, expected * 2)
    assert cache.length == 40


def test_reorder_gathers_and_can_shrink_the_batch():
    cache = KeyValueCache()
    keys = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 1).contiguous()
    cache.update(keys, -keys)
    cache.reorder(torch.tensor([2, 2, 0]))
    stored_keys, stored_values = cache.read()
    assert stored_keys[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0]
    assert stored_values[:, 0, 0, 0].tolist() == [-2.0, -2.0, -0.0]
    cache.reorder(torch.tensor([1]))
    assert cache.read()[0].shape == (1, 1, 2, 1)


def test_writing_into_the_storage_then_advancing_equals_update():
    """What a compiled decoding step does: write the next position in place."""
    steps = [torch.randn(5, 2, 1, 3) for _ in range(9)]
    updated, written = KeyValueCache(capacity=4), KeyValueCache(capacity=4)
    updated.update(steps[0], -steps[0])
    written.update(steps[0], -steps[0])
    updated.reorder(torch.tensor([4, 0, 2]))  # fewer rows than the buffers hold
    written.reorder(torch.tensor([4, 0, 2]))
    for step in steps[1:]:  # past the capacity: the storage grows to make room
        updated.update(step[:3], -step[:3])
        keys, values = written.storage(room=1)
        assert keys.shape[0] == 3 and keys.size(2) >= written.length + 1
        keys[:, :, written.length] = step[:3, :, 0]
        values[:, :, written.length] = -step[:3, :, 0]
        written.advance(1)
    for expected, actual in zip(updated.read(), written.read(), strict=True):
        assert torch.equal(actual, expected)
    with pytest.raises(ValueError, match="no room"):
        written.advance(written.storage()[0].size(2))


def test_reading_an_empty_cache_is_an_error():
    with pytest.raises(RuntimeError, match="cache is empty"):
        KeyValueCache().read()


def test_cross_attention_with_cache_projects_the_source_once():
    attention = MultiHeadAttention(32, 4, 2).eval()
    queries, memory = torch.randn(2, 1, 32), torch.randn(2, 7, 32)
    cache = KeyValueCache()
    first = attention(queries, memory, cache=cache)
    # Later steps read the stored keys/values: the states passed are not projected.
    again = attention(queries, torch.zeros_like(memory), cache=cache)
    torch.testing.assert_close(first, again)
    assert cache.length == 7


def test_low_precision_keys_are_kept_in_fp32_on_a_cpu():
    cache = KeyValueCache(capacity=4)
    keys = torch.randn(2, 1, 3, 4).bfloat16()
    stored_keys, stored_values = cache.update(keys, -keys)
    assert stored_keys.dtype == stored_values.dtype == torch.float32
    assert torch.equal(stored_keys, keys.float())
    assert torch.equal(stored_values, -keys.float())


def test_bf16_cached_steps_equal_the_full_causal_forward():
    """A bf16 decoder attends over its fp32 cache: same result as all at once."""
    attention = MultiHeadAttention(32, 4, 2).eval().bfloat16()
    states = torch.randn(2, 6, 32).bfloat16()
    cache = KeyValueCache()
    with torch.no_grad():
        expected = attention(states, is_causal=True)
        steps = [
            attention(states[:, t : t + 1], is_causal=True, cache=cache)
            for t in range(6)
        ]
    actual = torch.cat(steps, dim=1)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual.float(), expected.float(), atol=0.03, rtol=0.03)
