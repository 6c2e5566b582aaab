import math

import pytest
import torch

from encoder_transformer.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)


def test_sinusoidal_table_matches_the_paper_formula():
    table = sinusoidal_table(50, 16)
    for position, i in [(0, 0), (7, 3), (49, 7), (13, 0)]:
        angle = position / 10000 ** (2 * i / 16)
        assert table[position, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[position, 2 * i + 1].item() == pytest.approx(
            math.cos(angle), abs=1e-6
        )


@pytest.mark.parametrize(
    "module", [SinusoidalPositionalEncoding, LearnedPositionalEmbedding]
)
def test_additive_positions_respect_the_offset(module):
    positions = module(8, max_positions=20)
    embeddings = torch.zeros(2, 10, 8)
    whole = positions(embeddings)
    tail = positions(embeddings[:, 6:], offset=6)
    torch.testing.assert_close(tail, whole[:, 6:])


@pytest.mark.parametrize(
    "module",
    [
        lambda: SinusoidalPositionalEncoding(8, 10),
        lambda: LearnedPositionalEmbedding(8, 10),
    ],
)
def test_positions_beyond_the_maximum_raise_a_clear_error(module):
    with pytest.raises(ValueError, match="exceed max_positions=10"):
        module()(torch.zeros(1, 11, 8))


def test_rotary_scores_depend_on_distance_only():
    rotary = RotaryEmbedding(head_dim=8, max_positions=64)
    query, key = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(query_position, key_position):
        q = rotary(query, offset=query_position)
        k = rotary(key, offset=key_position)
        return (q * k).sum().item()

    assert score(9, 4) == pytest.approx(score(30, 25), abs=1e-5)
    assert score(9, 4) != pytest.approx(score(9, 5), abs=1e-3)


def test_rotary_preserves_vector_norms_and_is_identity_at_position_zero():
    rotary = RotaryEmbedding(head_dim=8, max_positions=16)
    heads = torch.randn(2, 3, 16, 8)
    rotated = rotary(heads)
    torch.testing.assert_close(rotated.norm(dim=-1), heads.norm(dim=-1))
    torch.testing.assert_close(rotated[:, :, 0], heads[:, :, 0])


def test_rotary_offset_equals_slice_of_longer_sequence():
    rotary = RotaryEmbedding(head_dim=8, max_positions=16)
    heads = torch.randn(1, 2, 10, 8)
    torch.testing.assert_close(
        rotary(heads[:, :, 4:], offset=4), rotary(heads)[:, :, 4:]
    )


def test_positional_buffers_are_not_saved_in_checkpoints():
    assert SinusoidalPositionalEncoding(8, 10).state_dict() == {}
    assert RotaryEmbedding(8, 10).state_dict() == {}
