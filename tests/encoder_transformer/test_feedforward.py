import pytest
import torch
import torch.nn.functional as F

from encoder_transformer.feedforward import FeedForward, SwiGLU, build_feedforward


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_shapes_and_factory(tiny_config, activation):
    ffn = build_feedforward(tiny_config(activation=activation))
    assert isinstance(ffn, SwiGLU if activation == "swiglu" else FeedForward)
    assert ffn(torch.randn(2, 5, 32)).shape == (2, 5, 32)


@pytest.mark.parametrize(("name", "function"), [("relu", F.relu), ("gelu", F.gelu)])
def test_feedforward_formula(name, function):
    ffn = FeedForward(8, 16, name, dropout=0.0, bias=True)
    x = torch.randn(3, 8)
    expected = ffn.contract(function(ffn.expand(x)))
    torch.testing.assert_close(ffn(x), expected)


def test_swiglu_formula():
    ffn = SwiGLU(8, 12, dropout=0.0, bias=False)
    x = torch.randn(3, 8)
    w_gate, w_up = ffn.gate_and_up.weight[:12], ffn.gate_and_up.weight[12:]
    expected = (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ ffn.down.weight.T
    torch.testing.assert_close(ffn(x), expected)
    assert sum(p.numel() for p in ffn.parameters()) == 3 * 8 * 12


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="activation='tanh'"):
        FeedForward(8, 16, "tanh", 0.0, True)


@pytest.mark.parametrize("activation", ["relu", "swiglu"])
def test_activation_dropout_is_separate_from_output_dropout(tiny_config, activation):
    x = torch.randn(4, 6, 32)
    only_hidden = build_feedforward(
        tiny_config(activation=activation, dropout=0.0, activation_dropout=0.5)
    ).train()
    assert not torch.equal(only_hidden(x), only_hidden(x))  # hidden layer dropped
    none = build_feedforward(
        tiny_config(activation=activation, dropout=0.0, activation_dropout=0.0)
    ).train()
    torch.testing.assert_close(none(x), none(x))
    assert tiny_config(dropout=0.3).activation_dropout == 0.3  # None → dropout
