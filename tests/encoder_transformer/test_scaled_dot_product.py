"""``attend`` on split heads: every path it takes equals the softmax written out."""

import pytest
import torch

from encoder_transformer.scaled_dot_product import (
    attend,
    attend_with_weights,
    is_cpu_decoding_step,
    merge_heads,
)

HEADS, WIDTH = 4, 8


def reference_attend(queries, keys, values, key_mask=None, is_causal=False):
    """softmax(Q Kᵀ / √d) V by hand: K/V heads repeated for GQA, causality aligned
    bottom-right (the queries are the last positions)."""
    group = queries.size(1) // keys.size(1)
    keys = keys.repeat_interleave(group, dim=1)
    values = values.repeat_interleave(group, dim=1)
    scores = queries @ keys.transpose(-1, -2) / queries.size(-1) ** 0.5
    s_q, s_kv = queries.size(2), keys.size(2)
    allowed = torch.ones(queries.size(0), 1, s_q, s_kv, dtype=torch.bool)
    if key_mask is not None:
        allowed &= key_mask[:, None, None, :]
    if is_causal:
        allowed &= torch.ones(s_q, s_kv, dtype=torch.bool).tril(s_kv - s_q)
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ values


def padding_mask(lengths, total):
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


def heads(batch, n_heads, length):
    return torch.randn(batch, n_heads, length, WIDTH)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("query_length", [6, 2], ids=["square", "after-cache"])
def test_sdpa_equals_explicit_softmax_with_padding_and_causality(
    n_kv_heads, query_length
):
    queries = heads(3, HEADS, query_length)
    keys, values = heads(3, n_kv_heads, 6), heads(3, n_kv_heads, 6)
    mask = padding_mask([6, 6, 5], 6)
    actual = attend(queries, keys, values, mask, is_causal=True)
    expected = reference_attend(queries, keys, values, mask, is_causal=True)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("query_length", [1, 5])
def test_written_out_decoding_step_equals_sdpa(n_kv_heads, query_length):
    """Few queries on a CPU without gradients take two products instead of SDPA."""
    queries = heads(3, HEADS, query_length)
    keys, values = heads(3, n_kv_heads, 7), heads(3, n_kv_heads, 7)
    mask = padding_mask([7, 4, 1], 7)
    assert is_cpu_decoding_step(queries, dropout=0.0) is False  # gradients on
    with torch.no_grad():
        assert is_cpu_decoding_step(queries, dropout=0.0)
        written_out = attend(queries, keys, values, key_padding_mask=mask)
    sdpa = attend(queries, keys, values, key_padding_mask=mask)  # grad on: SDPA
    expected = reference_attend(queries, keys, values, mask)
    torch.testing.assert_close(written_out, sdpa, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(written_out, expected, atol=1e-5, rtol=1e-5)


def test_bf16_cpu_kernel_choice_matches_fp32_reference():
    """The math kernel chosen for short bf16 inputs on a CPU computes the same thing."""
    queries, keys, values = heads(2, HEADS, 6), heads(2, 2, 6), heads(2, 2, 6)
    mask = padding_mask([6, 3], 6)
    expected = attend(queries, keys, values, mask, is_causal=True)
    actual = attend(
        queries.bfloat16(), keys.bfloat16(), values.bfloat16(), mask, is_causal=True
    )
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual.float(), expected, atol=0.05, rtol=0.05)


def test_attention_runs_in_the_keys_wider_type():
    """bf16 queries over an fp32 cache: computed in fp32, returned in bf16."""
    queries = torch.randn(2, HEADS, 1, 8)
    keys, values = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mask = padding_mask([5, 3], 5)
    with torch.no_grad():
        expected = attend(queries.bfloat16().float(), keys, values, mask)
        actual = attend(queries.bfloat16(), keys, values, mask)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual, expected.bfloat16())


def test_merge_heads_puts_each_tokens_heads_side_by_side():
    split = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5)  # (b, h, s, d_h)
    merged = merge_heads(split)
    assert merged.shape == (2, 4, 15)
    torch.testing.assert_close(merged[1, 2, 5:10], split[1, 1, 2])


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("is_causal", [False, True], ids=["cross", "causal"])
@pytest.mark.parametrize("grad", [True, False], ids=["sdpa", "decoding-step-path"])
def test_attention_with_weights_equals_attend(n_kv_heads, is_causal, grad):
    """The written-out softmax gives attend's output, and weights that are a
    distribution over the real (and, causally, earlier) keys."""
    queries = heads(3, HEADS, 5)
    keys, values = heads(3, n_kv_heads, 5), heads(3, n_kv_heads, 5)
    mask = padding_mask([5, 3, 1], 5)
    with torch.set_grad_enabled(grad):
        expected = attend(queries, keys, values, mask, is_causal)
        attended, weights = attend_with_weights(queries, keys, values, mask, is_causal)
    torch.testing.assert_close(attended, expected, atol=1e-5, rtol=1e-5)
    assert weights.shape == (3, HEADS, 5, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, HEADS, 5))
    assert (weights[1, :, :, 3:] == 0).all() and (weights[2, :, :, 1:] == 0).all()
    if is_causal:
        assert (weights[0].triu(1) == 0).all()


@pytest.mark.parametrize("n_kv_heads", [4, 2], ids=["MHA", "GQA"])
@pytest.mark.parametrize("is_causal", [False, True], ids=["padding", "causal"])
def test_bf16_cpu_dropout_path_equals_sdpa_without_dropout(n_kv_heads, is_causal):
    # Below the mask's resolution (2^-16) dropout keeps every weight, scaled by 1:
    # the written-out path must then give SDPA's math kernel's result, bit for bit,
    # and the same gradients (under autocast too, as in training).
    torch.manual_seed(0)
    inputs = [
        heads(3, HEADS, 6).bfloat16().requires_grad_(),
        heads(3, n_kv_heads, 6).bfloat16().requires_grad_(),
        heads(3, n_kv_heads, 6).bfloat16().requires_grad_(),
    ]
    key_mask = padding_mask([6, 4, 1], 6)
    results = []
    for dropout in (0.0, 1e-9):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            attended = attend(*inputs, key_mask, is_causal, dropout)
        gradients = torch.autograd.grad(attended.float().square().sum(), inputs)
        results.append((attended, *gradients))
    for sdpa, written_out in zip(*results, strict=True):
        assert torch.equal(sdpa, written_out)


def test_bf16_cpu_attention_dropout_drops_weights_at_the_rate():
    # With the values an identity matrix, the output is the (dropped) weights.
    torch.manual_seed(0)
    p, length = 0.3, 16
    queries, keys = heads(64, HEADS, length).bfloat16(), heads(64, HEADS, length)
    values = torch.eye(length).expand(64, HEADS, length, length).bfloat16()
    weights = attend(queries, keys.bfloat16(), values, dropout=p).float()
    dropped = (weights == 0).float().mean().item()
    assert abs(dropped - p) < 0.01  # 1M weights: the standard deviation is 5e-4
    # Inverted dropout: each row of surviving weights sums to 1 on average.
    assert abs(weights.sum(-1).mean().item() - 1) < 0.01
