import pytest
import torch
from torch import nn

from encoder_transformer.normalization import build_norm, residual


def test_rmsnorm_divides_by_root_mean_square():
    norm = build_norm("rmsnorm", 6, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 6))
    x = torch.randn(3, 4, 6)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_layernorm_centres_and_scales():
    norm = build_norm("layernorm", 6, eps=1e-5)
    output = norm(torch.randn(3, 4, 6) * 5 + 3)
    torch.testing.assert_close(output.mean(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        output.var(-1, unbiased=False), torch.ones(3, 4), atol=1e-3, rtol=0
    )


def test_layernorm_without_bias():
    assert build_norm("layernorm", 6, 1e-5, bias=False).bias is None


def test_unknown_norm_is_rejected():
    with pytest.raises(ValueError, match="norm='groupnorm'"):
        build_norm("groupnorm", 6, 1e-5)


def test_pre_and_post_norm_placement():
    norm = nn.LayerNorm(4)
    x = torch.randn(2, 3, 4)

    def sublayer(h):
        return 2 * h + 1

    torch.testing.assert_close(
        residual(x, sublayer, norm, pre_norm=True), x + sublayer(norm(x))
    )
    torch.testing.assert_close(
        residual(x, sublayer, norm, pre_norm=False), norm(x + sublayer(x))
    )
