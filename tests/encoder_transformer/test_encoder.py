import pytest
import torch

from encoder_transformer.embedding import build_token_embedding
from encoder_transformer.encoder import TransformerEncoder


def build_encoder(config):
    embedding = build_token_embedding(config.vocab_size, config.d_model, config.pad_id)
    return TransformerEncoder(config, embedding).eval()


@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "rope", "none"])
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_padding_leaves_real_positions_unchanged(tiny_config, positions, placement):
    config = tiny_config(positions=positions, norm_placement=placement, n_kv_heads=2)
    encoder = build_encoder(config)
    sentence = torch.randint(1, config.vocab_size, (1, 5))
    alone = encoder(sentence, torch.ones(1, 5, dtype=torch.bool))
    padded = torch.cat([sentence, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 4])
    in_batch = encoder(padded, mask)
    torch.testing.assert_close(in_batch[:, :5], alone, atol=1e-5, rtol=1e-5)


def test_output_shape_and_final_norm(tiny_config):
    encoder = build_encoder(tiny_config(norm="rmsnorm"))
    output = encoder(torch.randint(1, 37, (3, 7)))
    assert output.shape == (3, 7, 32)
    # The final RMSNorm (gain 1 at init) leaves each vector with unit root mean square.
    torch.testing.assert_close(
        output.pow(2).mean(-1).sqrt(), torch.ones(3, 7), atol=1e-3, rtol=0
    )


def test_attention_sees_the_whole_source(tiny_config):
    """No causal mask: changing the last token changes the first token's output."""
    encoder = build_encoder(tiny_config())
    source = torch.randint(1, 37, (1, 6))
    changed = source.clone()
    changed[0, -1] = (changed[0, -1] % 36) + 1
    assert not torch.allclose(encoder(source)[0, 0], encoder(changed)[0, 0])


def test_embeddings_are_scaled_by_sqrt_d_model(tiny_config):
    config = tiny_config(positions="none")
    encoder = build_encoder(config)
    ids = torch.tensor([[3, 4]])
    expected = encoder.embedding.tokens(ids) * config.d_model**0.5
    torch.testing.assert_close(encoder.embedding(ids), expected)
    unscaled = build_encoder(tiny_config(positions="none", scale_embeddings=False))
    torch.testing.assert_close(unscaled.embedding(ids), unscaled.embedding.tokens(ids))


def test_pad_embedding_is_zero_and_receives_no_gradient(tiny_config):
    encoder = build_encoder(tiny_config())
    weight = encoder.embedding.tokens.weight
    assert weight[0].abs().sum() == 0
    states = encoder(torch.tensor([[5, 6, 0, 0]]))
    # Weighted: a plain sum of layer-normalized states is a constant (zero gradient).
    (
        states * torch.randn(states.shape, generator=torch.Generator().manual_seed(0))
    ).sum().backward()
    assert weight.grad[0].abs().sum() == 0
    assert weight.grad[5].abs().sum() > 0
