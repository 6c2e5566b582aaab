import pytest
import torch

from encoder_transformer.dropout import MASK_LEVELS, Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_drop_rate_and_expectation(p):
    outputs = dropout(torch.ones(1_000_000), p)
    dropped = (outputs == 0).float().mean().item()
    # Binomial standard deviation at 1M draws is ~5e-4: 5e-3 cannot fail by chance.
    assert abs(dropped - p) < 5e-3
    assert abs(outputs.mean().item() - 1) < 5e-3  # inverted dropout keeps the mean
    scale = MASK_LEVELS / round((1 - p) * MASK_LEVELS)  # within 2^-16 of 1/(1-p)
    survivors = outputs[outputs != 0]
    torch.testing.assert_close(survivors, torch.full_like(survivors, scale))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_every_word_of_a_draw_drops_at_the_rate(p):
    # Four elements share one 64-bit draw; the top word has a random bit fewer.
    outputs = dropout(torch.ones(4_000_000), p).view(-1, 4)
    dropped = (outputs == 0).float().mean(dim=0)
    torch.testing.assert_close(dropped, torch.full((4,), p), atol=5e-3, rtol=0)


def test_probabilities_beyond_the_mask_resolution():
    inputs = torch.randn(10_000)
    torch.manual_seed(0)
    assert torch.equal(dropout(inputs, 1e-6), inputs)  # keeps all, scales by 1
    assert torch.equal(dropout(inputs, 1 - 1e-6), torch.zeros_like(inputs))


def test_gradient_is_the_mask():
    inputs = torch.randn(64, 32, requires_grad=True)
    outputs = dropout(inputs, 0.5)
    outputs.sum().backward()
    mask = outputs.detach() / inputs.detach()
    torch.testing.assert_close(inputs.grad, mask)
    assert set(inputs.grad.unique().tolist()) == {0.0, 2.0}


def test_module_is_an_identity_in_eval_mode_and_at_zero():
    inputs = torch.randn(8, 16)
    layer = Dropout(0.5).eval()
    assert layer(inputs) is inputs
    assert Dropout(0.0).train()(inputs) is inputs
    assert torch.equal(Dropout(1.0).train()(inputs), torch.zeros_like(inputs))


def test_same_seed_same_mask_and_dtype_kept():
    inputs = torch.randn(4, 100).bfloat16()
    torch.manual_seed(3)
    first = dropout(inputs, 0.2)
    torch.manual_seed(3)
    assert torch.equal(first, dropout(inputs, 0.2))
    assert first.dtype == torch.bfloat16
    assert not torch.equal(first, dropout(inputs, 0.2))  # the generator moved on


def test_bad_probability_is_rejected():
    with pytest.raises(ValueError, match=r"p=1.5 must be in \[0, 1\]"):
        Dropout(1.5)
