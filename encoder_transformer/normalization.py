"""Normalization layers: LayerNorm and RMSNorm, chosen by ``config.norm``.

Both rescale each token's hidden vector to a fixed size, which keeps activations and
gradients in range as blocks are stacked.

- **LayerNorm** (Ba et al. 2016) subtracts the mean and divides by the standard
  deviation over the ``d`` features, then applies a learned gain and bias:
  ``y = (x - mean(x)) / sqrt(var(x) + eps) * g + b``.
- **RMSNorm** (Zhang & Sennrich 2019) skips the centring and the bias:
  ``y = x / sqrt(mean(x²) + eps) * g``. It is cheaper and works as well in practice,
  which is why LLaMA-style models use it.

PyTorch ships both (``nn.LayerNorm``, ``nn.RMSNorm``, with fused kernels), so this file
only chooses between them.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


def build_norm(norm: str, d_model: int, eps: float, bias: bool = True) -> nn.Module:
    """A normalization over the last dimension of ``(..., d)``; output same shape.

    Args:
        norm: ``"layernorm"`` or ``"rmsnorm"``.
        d_model: Size of the normalized (last) dimension.
        eps: Added to the variance (or mean square) for numerical safety.
        bias: Whether LayerNorm has a learned bias (RMSNorm never has one).

    >>> build_norm("rmsnorm", 4, 1e-6)
    RMSNorm((4,), eps=1e-06, elementwise_affine=True)
    >>> build_norm("batchnorm", 4, 1e-6)
    Traceback (most recent call last):
    ...
    ValueError: norm='batchnorm' is not one of ('layernorm', 'rmsnorm')
    """
    if norm == "layernorm":
        return nn.LayerNorm(d_model, eps=eps, bias=bias)
    if norm == "rmsnorm":
        return nn.RMSNorm(d_model, eps=eps)
    raise ValueError(f"norm={norm!r} is not one of ('layernorm', 'rmsnorm')")


def residual(
    hidden_states: Tensor,
    sublayer: Callable[[Tensor], Tensor],
    norm: nn.Module,
    pre_norm: bool,
) -> Tensor:
    """One residual connection with its normalization, in either placement.

    - pre-norm (GPT-2 onwards): ``x + sublayer(norm(x))``. The residual path is an
      identity from input to output, so gradients reach early layers undiminished and
      training is stable without a long warm-up; the stack needs a final norm.
    - post-norm (the original Transformer): ``norm(x + sublayer(x))``.

    Args:
        hidden_states: ``(b, s, d)``.
        sublayer: Attention or feed-forward, ``(b, s, d)`` → ``(b, s, d)``.
        norm: The normalization layer of this sublayer.
        pre_norm: Which placement.

    Returns:
        ``(b, s, d)``.
    """
    if pre_norm:
        return hidden_states + sublayer(norm(hidden_states))
    return norm(hidden_states + sublayer(hidden_states))
