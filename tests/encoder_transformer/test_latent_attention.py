import math

import pytest
import torch

from encoder_transformer.config import TransformerConfig
from encoder_transformer.embedding import build_token_embedding
from encoder_transformer.encoder import (
    TransformerEncoder,
    build_rotary,
    build_self_attention,
)
from encoder_transformer.latent_attention import MultiHeadLatentAttention
from encoder_transformer.positional import RotaryEmbedding
from encoder_transformer.scaled_dot_product import attend

D_MODEL, HEADS, KV_LATENT, ROPE = 32, 4, 24, 4

# (rotary part, query compression): the four shapes MLA comes in.
VARIANTS = {
    "rope": {"rope": True, "q_latent_dim": None},
    "rope-qlatent": {"rope": True, "q_latent_dim": 16},
    "norope": {"rope": False, "q_latent_dim": None},
    "norope-qlatent": {"rope": False, "q_latent_dim": 16},
}


def build_mla(rope=True, q_latent_dim=None):
    rotary = RotaryEmbedding(ROPE, max_positions=64) if rope else None
    return MultiHeadLatentAttention(
        D_MODEL, HEADS, KV_LATENT, q_latent_dim, rotary
    ).eval()


class ConcatenatingCache:
    """The LatentAttentionCache protocol at its simplest: ``torch.cat`` per step."""

    def __init__(self, length=0):
        self.length = length
        self.entries = None

    def update(self, entries):
        self.length += entries.size(1)
        if self.entries is not None:
            entries = torch.cat([self.entries, entries], dim=1)
        self.entries = entries
        return entries


def reference_latent_attention(module, states, key_mask, is_causal):
    """MLA written out by hand: content scores plus the shared rotary key's scores."""
    batch, length, _ = states.shape
    heads, d_h, d_r = module.n_heads, module.head_dim, module.rope_head_dim
    queries = module.query(states).view(batch, length, heads, d_h + d_r)
    queries = queries.transpose(1, 2)
    down = module.kv_down(states)
    latent = module.kv_norm(down[..., : module.kv_latent_dim])
    keys = module.key_up(latent).view(batch, length, heads, d_h).transpose(1, 2)
    values = module.value_up(latent).view(batch, length, heads, d_h).transpose(1, 2)
    scores = queries[..., :d_h] @ keys.transpose(-1, -2)
    if module.rotary is not None:
        rotary_queries = module.rotary(queries[..., d_h:])  # (b, h, s, d_r)
        shared_key = module.rotary(down[..., module.kv_latent_dim :].unsqueeze(1))
        scores = scores + rotary_queries @ shared_key.transpose(-1, -2)
    scores = scores / math.sqrt(d_h + d_r)
    allowed = torch.ones(batch, 1, length, length, dtype=torch.bool)
    if key_mask is not None:
        allowed &= key_mask[:, None, None, :]
    if is_causal:
        allowed &= torch.ones(length, length, dtype=torch.bool).tril()
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    attended = (weights @ values).transpose(1, 2).reshape(batch, length, -1)
    return module.output(attended)


def padding_mask(lengths, total):
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_shapes_and_what_is_cached(variant):
    attention = build_mla(**variant)
    states = torch.randn(3, 5, D_MODEL)
    assert attention(states).shape == (3, 5, D_MODEL)
    rope = ROPE if variant["rope"] else 0
    # Per token: the latent and one rotary key for all heads, nothing per head.
    assert attention.compress(states, offset=0).shape == (3, 5, KV_LATENT + rope)
    assert attention.project_queries(states, 0).shape == (3, HEADS, 5, 8 + rope)
    keys, values = attention.expand(attention.compress(states, 0))
    assert keys.shape == (3, HEADS, 5, 8 + rope)
    assert values.shape == (3, HEADS, 5, 8)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize(
    ("padded", "is_causal"), [(False, False), (True, False), (True, True)]
)
def test_sdpa_path_equals_explicit_softmax(variant, padded, is_causal):
    attention = build_mla(**variant)
    states = torch.randn(3, 6, D_MODEL)
    mask = padding_mask([6, 4, 2], 6) if padded else None
    expected = reference_latent_attention(attention, states, mask, is_causal)
    actual = attention(states, key_padding_mask=mask, is_causal=is_causal)
    real = mask if mask is not None else torch.ones(3, 6, dtype=torch.bool)
    torch.testing.assert_close(actual[real], expected[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize("absorb", [True, False], ids=["absorbed", "expanded"])
def test_cached_steps_equal_one_causal_pass(variant, absorb):
    """Absorbed decoding (attention in latent space) == expanding keys and values."""
    attention = build_mla(**variant)
    attention.absorb = absorb
    states = torch.randn(3, 8, D_MODEL)
    mask = padding_mask([8, 6, 7], 8)
    full = attention(states, key_padding_mask=mask, is_causal=True)
    cache = ConcatenatingCache()
    with torch.no_grad():
        steps = [attention(states[:, :3], mask[:, :3], is_causal=True, cache=cache)]
        for t in range(3, 8):
            step_mask = mask[:, : t + 1]
            steps.append(attention(states[:, t : t + 1], step_mask, True, cache))
    stepped = torch.cat(steps, dim=1)
    torch.testing.assert_close(stepped[mask], full[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_attention_in_latent_space_equals_attention_on_expanded_heads(variant):
    """The absorbed computation, with many queries, padding and causality too."""
    attention = build_mla(**variant)
    states = torch.randn(3, 6, D_MODEL)
    mask = padding_mask([6, 4, 5], 6)
    queries, entries = (
        attention.project_queries(states, 0),
        attention.compress(states, 0),
    )
    in_latent_space = attention.attend_to_latents(queries, entries, mask, True, 0.0)
    keys, values = attention.expand(entries)
    expanded = attend(queries, keys, values, mask, is_causal=True)
    torch.testing.assert_close(in_latent_space, expanded, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_changing_a_later_token_never_changes_earlier_outputs(variant):
    attention = build_mla(**variant)
    states = torch.randn(1, 7, D_MODEL)
    outputs = attention(states, is_causal=True)
    for t in range(6):
        changed = states.clone()
        changed[0, t + 1] += 1.0
        changed_outputs = attention(changed, is_causal=True)
        torch.testing.assert_close(changed_outputs[:, : t + 1], outputs[:, : t + 1])
        assert not torch.allclose(changed_outputs[:, t + 1], outputs[:, t + 1])


@pytest.mark.parametrize("is_causal", [False, True], ids=["bidirectional", "causal"])
def test_padded_equals_unpadded_and_padded_rows_are_finite(is_causal):
    attention = build_mla(rope=True, q_latent_dim=16)
    sentence = torch.randn(1, 4, D_MODEL)
    padded = torch.cat([sentence, torch.randn(1, 3, D_MODEL)], dim=1)
    mask = padding_mask([4], 7)
    alone = attention(sentence, is_causal=is_causal)
    with_padding = attention(padded, key_padding_mask=mask, is_causal=is_causal)
    torch.testing.assert_close(with_padding[:, :4], alone, atol=1e-5, rtol=1e-5)
    all_padding = attention(padded, padding_mask([0], 7), is_causal)
    assert torch.isfinite(all_padding).all()


def test_rotary_part_makes_attention_depend_on_relative_positions_only():
    attention = build_mla(rope=True)
    states = torch.randn(2, 5, D_MODEL)
    at_zero = attention(states, is_causal=True, cache=ConcatenatingCache(0))
    at_ten = attention(states, is_causal=True, cache=ConcatenatingCache(10))
    torch.testing.assert_close(at_zero, at_ten, atol=1e-5, rtol=1e-5)
    # ... whereas the positions do matter: the tokens in another order differ.
    shuffled = attention(states[:, [1, 0, 2, 3, 4]], is_causal=True)
    assert not torch.allclose(shuffled[:, 2:], at_zero[:, 2:], atol=1e-4)


def test_config_builds_latent_self_attention_with_its_sizes(tiny_config):
    config = tiny_config(
        attention="latent", kv_latent_dim=24, q_latent_dim=16, positions="rope"
    )
    attention = build_self_attention(config, build_rotary(config))
    assert isinstance(attention, MultiHeadLatentAttention)
    assert attention.rope_head_dim == config.rope_head_dim == 4  # 8 // 2
    assert attention.kv_down.out_features == 24 + 4
    assert attention.query.down.out_features == 16
    standard = build_self_attention(tiny_config(), None)
    assert not isinstance(standard, MultiHeadLatentAttention)


def test_encoder_with_latent_attention_ignores_padding(tiny_config):
    config = tiny_config(attention="latent", kv_latent_dim=16, positions="rope")
    embedding = build_token_embedding(config.vocab_size, config.d_model, 0)
    encoder = TransformerEncoder(config, embedding).eval()
    source = torch.tensor([[5, 17, 9, 8, 3], [9, 23, 3, 0, 0]])
    hidden = encoder(source, source != 0)
    torch.testing.assert_close(
        hidden[1, :3], encoder(source[1:, :3])[0], atol=1e-5, rtol=1e-5
    )


def test_latent_defaults_are_resolved_only_for_latent_attention():
    latent = TransformerConfig(attention="latent", positions="rope")  # head_dim 64
    assert (latent.kv_latent_dim, latent.q_latent_dim, latent.rope_head_dim) == (
        256,
        None,
        32,
    )
    assert TransformerConfig(attention="latent").rope_head_dim is None  # no RoPE
    standard = TransformerConfig()
    assert (standard.kv_latent_dim, standard.rope_head_dim) == (None, None)
    assert TransformerConfig.from_dict(latent.to_dict()) == latent


def test_config_dict_without_the_attention_keys_still_loads():
    """Checkpoints written before MLA store no attention keys: still the same model."""
    old = TransformerConfig(d_model=64, n_heads=4, positions="rope").to_dict()
    for key in ("attention", "kv_latent_dim", "q_latent_dim", "rope_head_dim"):
        del old[key]
    config = TransformerConfig.from_dict(old)
    assert config.attention == "standard"
    assert config == TransformerConfig(d_model=64, n_heads=4, positions="rope")


def rotate_by_hand(channels, positions, base=10000.0):
    """RoPE written out: pair (x_i, x_{i+d/2}) turned by the angle p·base^(-2i/d).

    ``channels`` ``(..., s, d)``; ``positions`` ``(s,)``.
    """
    half = channels.size(-1) // 2
    frequencies = base ** (-torch.arange(half, dtype=torch.float32) * 2 / (2 * half))
    angles = positions[:, None].float() * frequencies  # (s, d/2)
    cos, sin = angles.cos(), angles.sin()
    first, second = channels[..., :half], channels[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], -1)


def test_latent_rope_rotates_only_its_rotary_part():
    """Queries and the cached key: the content part as projected, the decoupled
    rotary part turned by its position; an odd head_dim is fine (only d_r is even)."""
    config = TransformerConfig(
        d_model=24, n_heads=8, attention="latent", positions="rope"
    )
    assert (config.head_dim, config.rope_head_dim) == (3, 2)
    attention = build_self_attention(config, build_rotary(config)).eval()
    d_h, d_r, d_c = 3, 2, config.kv_latent_dim
    states = torch.randn(2, 5, 24)
    offset = 7
    positions = torch.arange(offset, offset + 5)
    with torch.no_grad():
        projected = attention.query(states).view(2, 5, 8, d_h + d_r).transpose(1, 2)
        queries = attention.project_queries(states, offset)
        down = attention.kv_down(states)
        entries = attention.compress(states, offset)
    torch.testing.assert_close(queries[..., :d_h], projected[..., :d_h])
    expected_rotary_queries = rotate_by_hand(projected[..., d_h:], positions)
    torch.testing.assert_close(queries[..., d_h:], expected_rotary_queries)
    torch.testing.assert_close(entries[..., :d_c], attention.kv_norm(down[..., :d_c]))
    expected_rotary_key = rotate_by_hand(down[..., d_c:], positions)
    torch.testing.assert_close(entries[..., d_c:], expected_rotary_key)
    # The rotation is not the identity here: every position is past 0.
    assert not torch.allclose(entries[..., d_c:], down[..., d_c:], atol=1e-3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attention": "flash"}, "attention='flash' is not one of"),
        ({"kv_latent_dim": 0}, "kv_latent_dim=0 must be at least 1"),
        ({"q_latent_dim": 0}, "q_latent_dim=0 must be at least 1, or null"),
        ({"rope_head_dim": -2}, "rope_head_dim=-2 must be at least 1"),
        ({"kv_latent_dim": "64"}, "kv_latent_dim='64' must be of type int"),
        ({"q_latent_dim": 1.5}, "q_latent_dim=1.5 must be of type int"),
        (
            {"rope_head_dim": 5, "positions": "rope"},
            "rope_head_dim=5 must be even",
        ),
    ],
)
def test_bad_latent_settings_name_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**{"attention": "latent", **overrides})
