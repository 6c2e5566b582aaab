import pytest
import torch
import torch.nn.functional as F

from decoder_transformer.gpt import GPT

VARIANTS = {
    "sinusoidal": {"positions": "sinusoidal"},
    "learned": {"positions": "learned"},
    "rope-gqa-rmsnorm-swiglu": {
        "positions": "rope",
        "n_kv_heads": 2,
        "norm": "rmsnorm",
        "activation": "swiglu",
    },
    "none-mqa-post": {"positions": "none", "n_kv_heads": 1, "norm_placement": "post"},
}


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_cached_decoding_equals_full_forward(tiny_config, variant):
    gpt = GPT(tiny_config(**variant)).eval()
    tokens = torch.randint(1, 37, (3, 10))
    full = gpt(tokens)
    with torch.no_grad():
        cache = gpt.new_cache()
        steps = [gpt.step(tokens[:, :4], cache)]  # a prompt, then one token at a time
        steps += [gpt.step(tokens[:, t : t + 1], cache) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_right_padding_leaves_real_positions_unchanged(tiny_config, variant):
    gpt = GPT(tiny_config(**variant)).eval()
    prompt = torch.randint(1, 37, (1, 5))
    padded = torch.cat([prompt, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    torch.testing.assert_close(
        gpt(padded, mask)[:, :5], gpt(prompt), atol=1e-5, rtol=1e-5
    )


def test_left_padding_with_rope_leaves_real_positions_unchanged(tiny_config):
    """RoPE sees only relative positions, so masked left padding changes nothing."""
    gpt = GPT(tiny_config(positions="rope")).eval()
    prompt = torch.randint(1, 37, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 5])
    logits = gpt(padded, mask)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[:, 3:], gpt(prompt), atol=1e-5, rtol=1e-5)


def test_gpt_has_no_cross_attention_and_a_tied_head(tiny_config):
    gpt = GPT(tiny_config())
    assert all(block.cross_attention is None for block in gpt.decoder.blocks)
    head = gpt.decoder.embedding.tokens.weight
    assert sum(p is head for p in gpt.parameters()) == 1


@pytest.mark.parametrize(
    "attention",
    [
        {"n_kv_heads": 2},
        # Latent attention: the cache holds 32 + 8 numbers per token and layer.
        {"attention": "latent", "kv_latent_dim": 32, "q_latent_dim": 32},
    ],
    ids=["gqa", "mla"],
)
def test_tiny_gpt_memorises_a_short_text(tiny_config, attention):
    text = "to be, or not to be: that is the question."
    alphabet = sorted(set(text))
    ids = torch.tensor([[alphabet.index(c) + 1 for c in text]])  # 0 is PAD
    gpt = GPT(
        tiny_config(
            vocab_size=len(alphabet) + 1,
            d_model=64,
            d_ff=128,
            positions="rope",
            norm="rmsnorm",
            activation="swiglu",
            **attention,
        )
    )
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    for _ in range(150):
        logits = gpt(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05

    gpt.eval()
    generated = ids[:, :1]
    with torch.no_grad():
        cache = gpt.new_cache()
        next_token = generated
        for _ in range(len(text) - 1):
            next_token = gpt.step(next_token, cache)[:, -1].argmax(-1, keepdim=True)
            generated = torch.cat([generated, next_token], dim=1)
    assert "".join(alphabet[i - 1] for i in generated[0].tolist()) == text
