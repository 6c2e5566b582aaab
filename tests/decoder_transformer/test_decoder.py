import pytest
import torch

from decoder_transformer.decoder import DecoderBlock, TransformerDecoder
from encoder_transformer.embedding import build_token_embedding


def build_decoder(config, cross_attention=True):
    embedding = build_token_embedding(config.vocab_size, config.d_model, config.pad_id)
    return TransformerDecoder(config, embedding, cross_attention).eval()


def test_logits_shape_and_tied_head(tiny_config):
    decoder = build_decoder(tiny_config())
    memory = torch.randn(2, 6, 32)
    logits = decoder(torch.randint(1, 37, (2, 4)), None, memory)
    assert logits.shape == (2, 4, 37)
    hidden = torch.randn(2, 4, 32)
    torch.testing.assert_close(
        decoder.lm_head(hidden), hidden @ decoder.embedding.tokens.weight.T
    )


@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "rope", "none"])
def test_changing_a_later_token_never_changes_earlier_logits(tiny_config, positions):
    decoder = build_decoder(tiny_config(positions=positions))
    memory = torch.randn(1, 5, 32)
    target = torch.randint(1, 37, (1, 8))
    logits = decoder(target, None, memory)
    for t in range(7):
        changed = target.clone()
        changed[0, t + 1] = (changed[0, t + 1] % 36) + 1
        changed_logits = decoder(changed, None, memory)
        torch.testing.assert_close(changed_logits[:, : t + 1], logits[:, : t + 1])
        assert not torch.allclose(changed_logits[:, t + 1], logits[:, t + 1])


def test_block_without_cross_attention_has_no_cross_weights(tiny_config):
    block = DecoderBlock(tiny_config(), cross_attention=False)
    names = [name for name, _ in block.named_parameters()]
    assert not any(name.startswith("cross_attention") for name in names)
    with_cross = DecoderBlock(tiny_config(), cross_attention=True)
    assert any(
        n.startswith("cross_attention.") for n, _ in with_cross.named_parameters()
    )


def test_cross_attention_block_requires_encoder_states(tiny_config):
    decoder = build_decoder(tiny_config())
    with pytest.raises(ValueError, match="needs encoder_hidden_states"):
        decoder(torch.randint(1, 37, (1, 3)))


def test_cross_attention_reads_the_source(tiny_config):
    decoder = build_decoder(tiny_config())
    target = torch.randint(1, 37, (1, 4))
    memory = torch.randn(1, 5, 32)
    other = memory.clone()
    other[0, 2] += 1.0
    assert not torch.allclose(
        decoder(target, None, memory), decoder(target, None, other)
    )
    # A masked source position is invisible.
    mask = torch.tensor([[True, True, False, True, True]])
    torch.testing.assert_close(
        decoder(target, None, memory, mask), decoder(target, None, other, mask)
    )


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_cross_attention_weights_come_with_the_same_logits(tiny_config, placement):
    """The teacher-forced pass that returns the weights scores as ``forward`` does."""
    decoder = build_decoder(tiny_config(norm_placement=placement, n_kv_heads=2))
    target = torch.randint(1, 37, (2, 5))
    target_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    memory = torch.randn(2, 6, 32)
    source_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    expected = decoder(target, target_mask, memory, source_mask)
    logits, weights = decoder.forward_with_cross_attention(
        target, target_mask, memory, source_mask
    )
    torch.testing.assert_close(logits[target_mask], expected[target_mask])
    assert weights.shape == (2, 2, 4, 5, 6)  # (layers, b, h, s, s_src)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 4, 5))
    assert (weights[:, 1, :, :, 4:] == 0).all()  # the padded source is never read


def test_a_gpt_decoder_has_no_cross_attention_to_return(tiny_config):
    decoder = build_decoder(tiny_config(), cross_attention=False)
    with pytest.raises(ValueError, match="no cross-attention"):
        decoder.forward_with_cross_attention(
            torch.randint(1, 37, (1, 3)), None, torch.randn(1, 2, 32)
        )
