"""Attention masks: causality aligned to the last keys, and no row fully masked."""

import torch

from encoder_transformer.masks import attention_mask, causal_mask


def test_square_causal_mask_is_lower_triangular():
    assert torch.equal(causal_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())


def test_new_queries_after_cached_keys_see_every_earlier_key():
    mask = causal_mask(2, 5)  # queries at positions 3 and 4
    assert mask.tolist() == [
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]


def test_padding_and_causality_combine_and_broadcast():
    padding = torch.tensor([[True, True, True], [True, False, False]])
    assert attention_mask(padding, 3, 3, is_causal=False).shape == (2, 1, 1, 3)
    assert attention_mask(None, 2, 3, is_causal=True).shape == (2, 3)
    assert attention_mask(None, 2, 3, is_causal=False) is None
    both = attention_mask(padding, 3, 3, is_causal=True)
    assert both.shape == (2, 1, 3, 3)
    # Row 1's real token sees itself only; its padding queries see what they may.
    assert both[1, 0].tolist() == [[True, False, False]] * 3


def test_an_all_padding_row_sees_every_key_instead_of_none():
    """A row with no visible key would make softmax NaN: it sees all keys."""
    padding = torch.tensor([[False, False, False]])
    for is_causal in (False, True):
        mask = attention_mask(padding, 3, 3, is_causal)
        assert mask.any(dim=-1).all()
