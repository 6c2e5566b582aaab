"""Decoding with multi-head latent attention (MLA) on its latent cache."""

import pytest
import torch

from decoder_transformer.decoder import TransformerDecoder
from decoder_transformer.gpt import GPT
from decoder_transformer.kv_cache import KeyValueCache
from decoder_transformer.latent_cache import LatentCache
from encoder_transformer.embedding import build_token_embedding

VARIANTS = {
    "rope": {"positions": "rope"},
    "rope-qlatent": {"positions": "rope", "q_latent_dim": 16},
    "sinusoidal": {"positions": "sinusoidal"},
    "learned-qlatent-gqa-cross": {
        "positions": "learned",
        "q_latent_dim": 16,
        "n_kv_heads": 2,  # for cross-attention, which stays standard
    },
}


def mla_config(tiny_config, **overrides):
    return tiny_config(attention="latent", kv_latent_dim=24, **overrides)


def test_growing_one_step_at_a_time_equals_concatenation():
    cache = LatentCache()
    steps = [torch.randn(2, 1, 5) for _ in range(40)]  # past several regrowths
    for step in steps:
        entries = cache.update(step)
    torch.testing.assert_close(entries, torch.cat(steps, dim=1))
    assert cache.length == 40


def test_reorder_gathers_and_can_shrink_the_batch():
    cache = LatentCache()
    cache.update(torch.arange(3.0).view(3, 1, 1).expand(3, 2, 4))
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.read()[:, 0, 0].tolist() == [2.0, 2.0, 0.0]
    cache.reorder(torch.tensor([1]))
    assert cache.read().shape == (1, 2, 4)
    with pytest.raises(RuntimeError, match="cache is empty"):
        LatentCache().read()


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize("absorb", [True, False], ids=["absorbed", "expanded"])
def test_gpt_cached_decoding_equals_full_forward(tiny_config, variant, absorb):
    gpt = GPT(mla_config(tiny_config, **variant)).eval()
    for block in gpt.decoder.blocks:
        block.self_attention.absorb = absorb
    tokens = torch.randint(1, 37, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 7:] = False  # right padding
    full = gpt(tokens, mask)
    with torch.no_grad():
        cache = gpt.new_cache()
        steps = [gpt.step(tokens[:, :4], cache, mask[:, :4])]  # a prompt
        steps += [
            gpt.step(tokens[:, t : t + 1], cache, mask[:, : t + 1])
            for t in range(4, 10)
        ]
    torch.testing.assert_close(
        torch.cat(steps, dim=1)[mask], full[mask], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_decoder_cached_steps_after_a_reorder_equal_full_forward(tiny_config, variant):
    """Beam search's reorder: rows continue other rows' histories, some twice."""
    config = mla_config(tiny_config, **variant)
    embedding = build_token_embedding(config.vocab_size, config.d_model, config.pad_id)
    decoder = TransformerDecoder(config, embedding).eval()
    memory = torch.randn(3, 6, config.d_model)
    source_mask = torch.tensor(
        [[True] * 6, [True] * 4 + [False] * 2, [True] * 5 + [False]]
    )
    target = torch.randint(1, 37, (3, 9))
    parents = torch.tensor([2, 0, 2])
    with torch.no_grad():
        cache = decoder.new_cache()
        decoder.step(target[:, :3], cache, memory, source_mask)
        decoder.step(target[:, 3:5], cache, memory, source_mask)
        cache.reorder(parents)
        memory, source_mask = memory[parents], source_mask[parents]
        # New tokens for the reordered rows; their history is the parents'.
        continued = torch.cat([target[parents, :5], target[:, 5:]], dim=1)
        steps = [
            decoder.step(continued[:, t : t + 1], cache, memory, source_mask)
            for t in range(5, 9)
        ]
    full = decoder(continued, None, memory, source_mask)
    torch.testing.assert_close(
        torch.cat(steps, dim=1), full[:, 5:], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize(
    ("positions", "width"), [("rope", 24 + 4), ("learned", 24)], ids=["rope", "learned"]
)
def test_the_cache_holds_the_latent_not_keys_and_values(tiny_config, positions, width):
    """Per token and layer: d_c + d_r numbers, against 2·h_kv·d_h for MHA."""
    gpt = GPT(mla_config(tiny_config, positions=positions)).eval()
    mha = GPT(tiny_config(positions=positions)).eval()
    tokens = torch.randint(1, 37, (3, 10))
    with torch.no_grad():
        cache, mha_cache = gpt.new_cache(), mha.new_cache()
        gpt.step(tokens, cache)
        mha.step(tokens, mha_cache)
    assert cache.length == 10
    for layer in cache.self_attention:
        assert isinstance(layer, LatentCache)
        entries = layer.read()
        assert entries.shape == (3, 10, width)  # d_c (+ d_r), no head dimension
        assert entries.nbytes == 3 * 10 * width * 4  # float32
    # What the entries are: each token's normalized latent (and rotated rotary key).
    attention = gpt.decoder.blocks[0].self_attention
    hidden = gpt.decoder.blocks[0].self_attention_norm(gpt.decoder.embedding(tokens))
    torch.testing.assert_close(
        cache.self_attention[0].read(), attention.compress(hidden, 0)
    )
    keys, values = mha_cache.self_attention[0].read()
    assert isinstance(mha_cache.self_attention[0], KeyValueCache)
    assert keys.nbytes + values.nbytes == 3 * 10 * (2 * 4 * 8) * 4  # 2·h·d_h = 64
