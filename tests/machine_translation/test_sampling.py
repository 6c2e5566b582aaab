"""Sampling the next token: temperature, top-k, top-p, seeds, and its use in search."""

import pytest
import torch

from machine_translation.inference.greedy_search import greedy_search
from machine_translation.inference.sampling import (
    Sampling,
    keep_top_k,
    keep_top_p,
    sample_next_tokens,
)
from machine_translation.model import Seq2SeqTransformer

PAD, BOS, EOS = 0, 1, 2


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"temperature": -0.5}, "temperature=-0.5"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"top_k": 0}, "top_k=0"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"top_p": 1.5}, "top_p=1.5"),
    ],
)
def test_bad_settings_are_named(settings, named):
    with pytest.raises(ValueError, match=named):
        Sampling(**settings)


def test_zero_temperature_and_top_one_are_argmax():
    # Each row a shuffle of 0, 0.01, ..., 0.49: no two logits closer than 0.01.
    logits = torch.stack([torch.randperm(50) * 0.01 for _ in range(64)])
    argmax = logits.argmax(dim=-1)
    for sampling in (Sampling(temperature=0), Sampling(top_k=1), Sampling(top_p=1e-6)):
        assert torch.equal(sample_next_tokens(logits, sampling, seeded(0)), argmax)
    # As the temperature goes to 0 the distribution collapses onto the argmax.
    cold = sample_next_tokens(logits, Sampling(temperature=1e-4), seeded(0))
    assert torch.equal(cold, argmax)


def test_top_k_never_picks_outside_the_k_best():
    logits = torch.randn(8, 30)
    best = logits.topk(4, dim=-1).indices
    drawn = sample_next_tokens(
        logits.repeat(500, 1), Sampling(temperature=3.0, top_k=4), seeded(1)
    ).view(500, 8)
    for row in range(8):
        assert set(drawn[:, row].tolist()) == set(best[row].tolist())  # all 4, no more


def test_top_p_keeps_the_smallest_nucleus():
    # Probabilities 0.1, 0.4, 0.2, 0.3 in a shuffled order.
    logits = torch.tensor([[0.1, 0.4, 0.2, 0.3]]).log()
    kept = {
        p: torch.isfinite(keep_top_p(logits, p))[0].nonzero().flatten().tolist()
        for p in (0.3, 0.4, 0.65, 0.85, 0.95, 1.0)
    }
    assert kept == {
        0.3: [1],  # the most likely token is always kept
        0.4: [1],
        0.65: [1, 3],  # 0.4 + 0.3 ≥ 0.65 (0.4 alone is not)
        0.85: [1, 2, 3],
        0.95: [0, 1, 2, 3],
        1.0: [0, 1, 2, 3],
    }
    drawn = sample_next_tokens(logits.repeat(2000, 1), Sampling(top_p=0.65), seeded(2))
    assert set(drawn.tolist()) == {1, 3}


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]])
    assert torch.isfinite(keep_top_k(logits, 2)).sum() == 2
    assert torch.equal(keep_top_k(logits, 10), logits)


def test_same_seed_same_samples():
    logits = torch.randn(16, 40)
    sampling = Sampling(temperature=1.2, top_k=20, top_p=0.9)
    first = sample_next_tokens(logits, sampling, seeded(7))
    again = sample_next_tokens(logits, sampling, seeded(7))
    other = sample_next_tokens(logits, sampling, seeded(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_samples_follow_the_softmax(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    count = 40_000
    drawn = sample_next_tokens(
        logits.repeat(count, 1), Sampling(temperature=temperature), seeded(3)
    )
    frequencies = torch.bincount(drawn, minlength=5).float() / count
    expected = (logits / temperature).softmax(dim=-1)
    # The standard error of each frequency is below 0.0025: 0.01 is four of them.
    torch.testing.assert_close(frequencies, expected, atol=0.01, rtol=0)


def test_samples_follow_the_renormalized_top_k():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    count = 40_000
    drawn = sample_next_tokens(logits.repeat(count, 1), Sampling(top_k=3), seeded(4))
    frequencies = torch.bincount(drawn, minlength=5).float() / count
    expected = torch.cat([logits[:3].softmax(dim=-1), torch.zeros(2)])
    torch.testing.assert_close(frequencies, expected, atol=0.01, rtol=0)


# --- sampling inside seq2seq decoding ------------------------------------------------


def decode(model, batch, **kwargs):
    return greedy_search(
        model, batch, batch != PAD, bos_id=BOS, eos_id=EOS, pad_id=PAD, **kwargs
    )


def test_search_with_greedy_sampling_equals_greedy_search(tiny_config):
    model = Seq2SeqTransformer(tiny_config()).eval()
    batch = torch.randint(3, 37, (4, 6))
    greedy = decode(model, batch)
    for sampling in (Sampling(temperature=0), Sampling(top_k=1)):
        assert decode(model, batch, sampling=sampling, generator=seeded(0)) == greedy


def test_sampled_translations_are_reproducible_and_vary(tiny_config):
    model = Seq2SeqTransformer(tiny_config()).eval()
    batch = torch.randint(3, 37, (4, 6))
    sampling = Sampling(temperature=1.5)
    first = decode(model, batch, sampling=sampling, generator=seeded(5))
    assert decode(model, batch, sampling=sampling, generator=seeded(5)) == first
    assert decode(model, batch, sampling=sampling, generator=seeded(6)) != first
    assert all(PAD not in output and BOS not in output for output in first)
    prefixes = [[9, 10], [], [11], []]
    forced = decode(
        model, batch, sampling=sampling, generator=seeded(5), prefixes=prefixes
    )
    assert forced[0][:2] == [9, 10] and forced[2][:1] == [11]
