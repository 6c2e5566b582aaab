import math

import pytest
import torch

from encoder_transformer.attention import MultiHeadAttention
from encoder_transformer.positional import RotaryEmbedding

D_MODEL, HEADS = 32, 4


def reference_attention(module, query_states, key_value_states, key_mask, is_causal):
    """softmax(Q Kᵀ / √d_h) V written out by hand, with K/V heads repeated for GQA."""
    batch, s_q, _ = query_states.shape
    s_kv = key_value_states.size(1)
    d_h = module.head_dim
    q = module.query(query_states).view(batch, s_q, module.n_heads, d_h).transpose(1, 2)
    k = module.key(key_value_states).view(batch, s_kv, -1, d_h).transpose(1, 2)
    v = module.value(key_value_states).view(batch, s_kv, -1, d_h).transpose(1, 2)
    group = module.n_heads // module.n_kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d_h)
    allowed = torch.ones(batch, 1, s_q, s_kv, dtype=torch.bool)
    if key_mask is not None:
        allowed &= key_mask[:, None, None, :]
    if is_causal:
        allowed &= torch.ones(s_q, s_kv, dtype=torch.bool).tril()
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(batch, s_q, -1)
    return module.output(attended)


def padding_mask(lengths, total):
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
def test_shapes_for_self_and_cross_attention(n_kv_heads):
    attention = MultiHeadAttention(D_MODEL, HEADS, n_kv_heads)
    decoder_states, encoder_states = (
        torch.randn(3, 5, D_MODEL),
        torch.randn(3, 9, D_MODEL),
    )
    assert attention(decoder_states).shape == (3, 5, D_MODEL)
    assert attention(decoder_states, encoder_states).shape == (3, 5, D_MODEL)
    assert attention.key.out_features == n_kv_heads * D_MODEL // HEADS


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize(
    ("padded", "is_causal"),
    [(False, False), (True, False), (False, True), (True, True)],
)
def test_sdpa_path_equals_explicit_softmax(n_kv_heads, padded, is_causal):
    attention = MultiHeadAttention(D_MODEL, HEADS, n_kv_heads).eval()
    states = torch.randn(3, 6, D_MODEL)
    mask = padding_mask([6, 4, 2], 6) if padded else None
    expected = reference_attention(attention, states, states, mask, is_causal)
    actual = attention(states, key_padding_mask=mask, is_causal=is_causal)
    real = mask if mask is not None else torch.ones(3, 6, dtype=torch.bool)
    torch.testing.assert_close(actual[real], expected[real], atol=1e-5, rtol=1e-5)


def test_cross_attention_equals_explicit_softmax():
    attention = MultiHeadAttention(D_MODEL, HEADS, 2).eval()
    queries, memory = torch.randn(2, 3, D_MODEL), torch.randn(2, 7, D_MODEL)
    mask = padding_mask([7, 5], 7)
    expected = reference_attention(attention, queries, memory, mask, is_causal=False)
    actual = attention(queries, memory, key_padding_mask=mask)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [4, 1], ids=["MHA", "MQA"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_forward_with_weights_equals_the_sdpa_path(n_kv_heads, cross):
    """The explicit softmax path gives SDPA's output, and the weights it used."""
    rotary = None if cross else RotaryEmbedding(D_MODEL // HEADS, 16)
    attention = MultiHeadAttention(D_MODEL, HEADS, n_kv_heads, rotary=rotary).eval()
    queries, memory = torch.randn(2, 4, D_MODEL), torch.randn(2, 6, D_MODEL)
    key_states = memory if cross else None
    mask = padding_mask([6, 3], 6) if cross else padding_mask([4, 2], 4)
    expected = attention(
        queries, key_states, key_padding_mask=mask, is_causal=not cross
    )
    actual, weights = attention.forward_with_weights(
        queries, key_states, key_padding_mask=mask, is_causal=not cross
    )
    real = slice(None) if cross else mask  # padded queries' outputs are never read
    torch.testing.assert_close(actual[real], expected[real], atol=1e-5, rtol=1e-5)
    assert weights.shape == (2, HEADS, 4, mask.size(1))
    assert (weights[1, :, :, mask.size(1) - (3 if cross else 2) :] == 0).all()
    if cross:  # the weights are the reference's own
        reference = reference_attention(attention, queries, memory, mask, False)
        torch.testing.assert_close(actual, reference, atol=1e-5, rtol=1e-5)


def test_grouped_query_attention_is_mha_with_shared_key_value_heads():
    """GQA (2 KV heads for 4 query heads) == MHA whose K/V heads repeat per group."""
    gqa = MultiHeadAttention(D_MODEL, HEADS, n_kv_heads=2).eval()
    mha = MultiHeadAttention(D_MODEL, HEADS, n_kv_heads=HEADS).eval()
    d_h = D_MODEL // HEADS
    with torch.no_grad():
        for name in ("query", "output"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
        for name in ("key", "value"):
            source, target = getattr(gqa, name), getattr(mha, name)
            # Query heads 0,1 read KV head 0; query heads 2,3 read KV head 1.
            target.weight.copy_(
                source.weight.view(2, d_h, D_MODEL)
                .repeat_interleave(2, 0)
                .flatten(0, 1)
            )
            target.bias.copy_(
                source.bias.view(2, d_h).repeat_interleave(2, 0).flatten()
            )
    states = torch.randn(2, 5, D_MODEL)
    mask = padding_mask([5, 3], 5)
    torch.testing.assert_close(
        gqa(states, key_padding_mask=mask, is_causal=True),
        mha(states, key_padding_mask=mask, is_causal=True),
        atol=1e-5,
        rtol=1e-5,
    )


def test_mha_config_of_gqa_module_equals_plain_mha_weights():
    """n_kv_heads = n_heads takes the same weights and gives the same output as MHA."""
    mha = MultiHeadAttention(D_MODEL, HEADS, HEADS).eval()
    states = torch.randn(2, 5, D_MODEL)
    expected = reference_attention(mha, states, states, None, is_causal=False)
    torch.testing.assert_close(mha(states), expected, atol=1e-5, rtol=1e-5)


def test_fully_padded_row_gives_finite_output():
    attention = MultiHeadAttention(D_MODEL, HEADS, 2).eval()
    states = torch.randn(2, 4, D_MODEL)
    mask = padding_mask([4, 0], 4)
    for is_causal in (False, True):
        output = attention(states, key_padding_mask=mask, is_causal=is_causal)
        assert torch.isfinite(output).all()


def test_attention_dropout_only_in_training():
    attention = MultiHeadAttention(D_MODEL, HEADS, HEADS, attention_dropout=0.5)
    states = torch.randn(2, 6, D_MODEL)
    attention.train()
    assert not torch.allclose(attention(states), attention(states))
    attention.eval()
    torch.testing.assert_close(attention(states), attention(states))


def test_rotary_attention_depends_on_relative_positions_only():
    """With RoPE and no other positions, shifting all positions changes nothing."""

    class Offset:
        def __init__(self, length):
            self.length = length

        def update(self, keys, values):
            return keys, values

    rotary = RotaryEmbedding(D_MODEL // HEADS, max_positions=64)
    attention = MultiHeadAttention(D_MODEL, HEADS, 2, rotary=rotary).eval()
    states = torch.randn(2, 5, D_MODEL)
    at_zero = attention(states, is_causal=True, cache=Offset(0))
    at_ten = attention(states, is_causal=True, cache=Offset(10))
    torch.testing.assert_close(at_zero, at_ten, atol=1e-5, rtol=1e-5)
    # ... whereas the positions do matter: without the rotation, causal attention
    # would see the same set of tokens before position 2 in either order.
    swapped = attention(states[:, [1, 0, 2, 3, 4]], is_causal=True)
    assert not torch.allclose(swapped[:, 2:], at_zero[:, 2:], atol=1e-4)


def test_bad_head_counts_are_rejected():
    with pytest.raises(ValueError, match="n_kv_heads=3"):
        MultiHeadAttention(D_MODEL, HEADS, 3)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("query_length", [1, 5])
def test_decoding_step_without_gradients_equals_explicit_softmax(
    n_kv_heads, query_length
):
    """Few queries on a CPU without gradients take the written-out path."""
    attention = MultiHeadAttention(D_MODEL, HEADS, n_kv_heads).eval()
    queries, memory = torch.randn(3, query_length, D_MODEL), torch.randn(3, 7, D_MODEL)
    mask = padding_mask([7, 4, 1], 7)
    with torch.no_grad():
        actual = attention(queries, memory, key_padding_mask=mask)
    expected = reference_attention(attention, queries, memory, mask, is_causal=False)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
