"""The position-wise feed-forward network (FFN) of every Transformer block.

Attention mixes information *between* tokens; the FFN then transforms each token on its
own, through a wider hidden layer (``d_ff``, usually 4·d_model). Most of a Transformer's
parameters and FLOPs are here.

- ``FeedForward``: ``Linear(d, d_ff) → ReLU or GeLU → dropout → Linear(d_ff, d) →
  dropout`` (the original Transformer used ReLU; BERT and GPT use GeLU).
- ``SwiGLU`` (Shazeer 2020): a gated unit ``(SiLU(x W_gate) ⊙ x W_up) W_down``. The gate
  lets each hidden unit switch itself on per token; it trains better at equal FLOPs
  (PaLM, LLaMA). With three matrices instead of two, a ``d_ff`` of about 2/3 of the
  ReLU width keeps the parameter count equal.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from encoder_transformer.config import TransformerConfig
from encoder_transformer.dropout import Dropout


class FeedForward(nn.Module):
    """Two linear layers with ReLU or GeLU between; ``(..., d)`` → ``(..., d)``.

    ``dropout`` applies to the output, ``activation_dropout`` (default: the same) to
    the hidden layer.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str,
        dropout: float,
        bias: bool,
        activation_dropout: float | None = None,
    ) -> None:
        super().__init__()
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation={activation!r} is not 'relu' or 'gelu'")
        self.activation = F.relu if activation == "relu" else F.gelu
        self.expand = nn.Linear(d_model, d_ff, bias=bias)
        self.contract = nn.Linear(d_ff, d_model, bias=bias)
        hidden_dropout = dropout if activation_dropout is None else activation_dropout
        self.hidden_dropout = Dropout(hidden_dropout)
        self.dropout = Dropout(dropout)

    def forward(self, hidden_states: Tensor) -> Tensor:
        hidden = self.hidden_dropout(self.activation(self.expand(hidden_states)))
        return self.dropout(self.contract(hidden))


class SwiGLU(nn.Module):
    """The gated feed-forward unit of PaLM and LLaMA; ``(..., d)`` → ``(..., d)``."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        dropout: float,
        bias: bool,
        activation_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.d_ff = d_ff
        # W_gate and W_up read the same input: one matrix of 2·d_ff outputs does both
        # in a single matrix product.
        self.gate_and_up = nn.Linear(d_model, 2 * d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        hidden_dropout = dropout if activation_dropout is None else activation_dropout
        self.hidden_dropout = Dropout(hidden_dropout)
        self.dropout = Dropout(dropout)

    def forward(self, hidden_states: Tensor) -> Tensor:
        gate, up = self.gate_and_up(hidden_states).split(self.d_ff, dim=-1)
        hidden = self.hidden_dropout(F.silu(gate) * up)
        return self.dropout(self.down(hidden))


def build_feedforward(config: TransformerConfig) -> nn.Module:
    """The FFN that ``config.activation`` names, with ``config.d_ff`` hidden units."""
    if config.activation == "swiglu":
        return SwiGLU(
            config.d_model,
            config.d_ff,
            config.dropout,
            config.bias,
            config.activation_dropout,
        )
    return FeedForward(
        config.d_model,
        config.d_ff,
        config.activation,
        config.dropout,
        config.bias,
        config.activation_dropout,
    )
